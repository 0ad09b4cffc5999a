//! Message selectors: the SQL-92 subset JMS defines, as ActiveMQ and Artemis accept it in a
//! SUBSCRIBE's `selector` header.
//!
//! A selector is parsed once, when the subscription is made, so a bad one is refused with its
//! position and reason before any message is involved, and each message costs only a walk over
//! a small tree. Evaluation follows SQL's three-valued logic: a header the message does not carry
//! is NULL, any comparison with NULL is unknown, and a message is selected only when the whole
//! expression is true (so `NOT (x = 1)` does not select a message without `x`).
//!
//! Header values are text. A comparison with a numeric literal reads the header as a number
//! (unknown if it is not one); two headers compare as numbers when both read as numbers and as
//! text otherwise; a string literal always compares as text. `TRUE`/`FALSE` match the header
//! values `true`/`false` (any case). Identifiers are header names made of letters, digits, `_`,
//! `$` and `.`; a name with other characters (such as `x-region`) is written in double quotes
//! (`"x-region" = 'eu'`). The JMS names `JMSPriority`, `JMSType`, `JMSCorrelationID`,
//! `JMSTimestamp` and `JMSExpiration` stand for the STOMP headers `priority`, `type`,
//! `correlation-id`, `timestamp` and `expires`, as in ActiveMQ. Arithmetic is not part of this
//! subset: an expression using it is refused, never half-understood.

use std::cmp::Ordering;

use stampede_protocol::Headers;

/// Deepest nesting of parentheses and `NOT`s accepted, so that a hostile expression cannot
/// exhaust the stack of the parser or of the evaluator.
pub const MAX_DEPTH: usize = 64;

/// Most tokens (names, literals, operators) in one selector, which bounds what evaluating it
/// costs each message: a subscriber chooses its selector, but a topic's publisher and a queue's
/// actor pay for it.
pub const MAX_TOKENS: usize = 4096;

/// Why an expression is not a selector, and where (a 1-based character position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {reason}")]
pub struct SelectorError {
    /// 1-based position, in characters, of where the expression went wrong.
    pub position: usize,
    /// What was wrong there.
    pub reason: String,
}

/// A parsed selector.
#[derive(Debug, Clone)]
pub struct Selector {
    text: String,
    root: Expression,
}

impl Selector {
    /// Parses `text`.
    ///
    /// # Errors
    /// A [`SelectorError`] naming the position and the reason.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, at: 0, depth: 0 };
        let root = parser.or_expression()?;
        if !matches!(parser.peek(), Token::End) {
            return Err(parser.error(format!("unexpected {}; expected AND, OR or the end", parser.peek().describe())));
        }
        Ok(Selector { text: text.to_owned(), root })
    }

    /// The expression as the client wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when the message with `headers` is selected (the expression is true, not unknown).
    pub fn matches(&self, headers: &Headers) -> bool {
        self.root.truth(headers) == Truth::True
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn of(value: bool) -> Truth {
        if value { Truth::True } else { Truth::False }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    fn negated_if(self, negated: bool) -> Truth {
        if negated { self.not() } else { self }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Equal => ordering == Ordering::Equal,
            Comparison::NotEqual => ordering != Ordering::Equal,
            Comparison::Less => ordering == Ordering::Less,
            Comparison::LessOrEqual => ordering != Ordering::Greater,
            Comparison::Greater => ordering == Ordering::Greater,
            Comparison::GreaterOrEqual => ordering != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Header(String),
    Text(String),
    Number(f64),
    Boolean(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum LikePart {
    Character(char),
    AnyOne,
    AnyMany,
}

#[derive(Debug, Clone, PartialEq)]
enum Expression {
    /// `a OR b OR ...`, flat, so a long chain does not make a deep tree.
    Or(Vec<Expression>),
    /// `a AND b AND ...`, flat.
    And(Vec<Expression>),
    Not(Box<Expression>),
    Compare {
        comparison: Comparison,
        left: Operand,
        right: Operand,
    },
    Between {
        operand: Operand,
        low: Operand,
        high: Operand,
        negated: bool,
    },
    In {
        operand: Operand,
        list: Vec<String>,
        negated: bool,
    },
    Like {
        operand: Operand,
        pattern: Vec<LikePart>,
        negated: bool,
    },
    IsNull {
        operand: Operand,
        negated: bool,
    },
    /// A header or literal used as a condition on its own (`urgent`, `TRUE`).
    Condition(Operand),
}

/// A value during evaluation. Header values are untyped text; literals keep their type.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Null,
    Header(&'a str),
    Text(&'a str),
    Number(f64),
    Boolean(bool),
}

impl<'a> Value<'a> {
    fn of(operand: &'a Operand, headers: &'a Headers) -> Value<'a> {
        match operand {
            Operand::Header(name) => headers.get(name).map_or(Value::Null, Value::Header),
            Operand::Text(text) => Value::Text(text),
            Operand::Number(number) => Value::Number(*number),
            Operand::Boolean(value) => Value::Boolean(*value),
        }
    }

    fn text(self) -> Option<&'a str> {
        match self {
            Value::Header(text) | Value::Text(text) => Some(text),
            _ => None,
        }
    }

    fn boolean(self) -> Option<bool> {
        match self {
            Value::Boolean(value) => Some(value),
            Value::Header(text) if text.eq_ignore_ascii_case("true") => Some(true),
            Value::Header(text) if text.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }
}

/// A header value read as a number: digits with an optional sign, fraction and exponent (not
/// `inf` or `NaN`, which Rust's float parser would take).
fn number(text: &str) -> Option<f64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E')) {
        return None;
    }
    text.parse().ok()
}

fn compare(comparison: Comparison, left: Value<'_>, right: Value<'_>) -> Truth {
    let ordering = match (left, right) {
        (Value::Null, _) | (_, Value::Null) => None,
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(&b),
        (Value::Number(a), Value::Header(b)) => number(b).and_then(|b| a.partial_cmp(&b)),
        (Value::Header(a), Value::Number(b)) => number(a).and_then(|a| a.partial_cmp(&b)),
        (Value::Header(a), Value::Header(b)) => match (number(a), number(b)) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => Some(a.cmp(b)),
        },
        (Value::Boolean(_), _) | (_, Value::Boolean(_)) => {
            let (Some(a), Some(b)) = (left.boolean(), right.boolean()) else { return Truth::Unknown };
            return match comparison {
                Comparison::Equal => Truth::of(a == b),
                Comparison::NotEqual => Truth::of(a != b),
                _ => Truth::Unknown,
            };
        }
        _ => match (left.text(), right.text()) {
            (Some(a), Some(b)) => Some(a.cmp(b)),
            _ => None,
        },
    };
    ordering.map_or(Truth::Unknown, |ordering| Truth::of(comparison.holds(ordering)))
}

fn like(pattern: &[LikePart], text: &str) -> bool {
    // Greedy matching that backtracks only to the last `%`: O(pattern × text) at worst, never
    // exponential, and without allocating.
    let (mut part, mut at) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while let Some(character) = text[at..].chars().next() {
        match pattern.get(part) {
            Some(LikePart::AnyOne) => {
                part += 1;
                at += character.len_utf8();
                continue;
            }
            Some(LikePart::Character(expected)) if *expected == character => {
                part += 1;
                at += character.len_utf8();
                continue;
            }
            Some(LikePart::AnyMany) => {
                part += 1;
                resume = Some((part, at));
                continue;
            }
            _ => {}
        }
        let Some((resume_part, resume_at)) = resume else { return false };
        let skipped = text[resume_at..].chars().next().map_or(1, char::len_utf8);
        resume = Some((resume_part, resume_at + skipped));
        part = resume_part;
        at = resume_at + skipped;
    }
    pattern[part..].iter().all(|p| *p == LikePart::AnyMany)
}

impl Expression {
    fn truth(&self, headers: &Headers) -> Truth {
        match self {
            Expression::Or(terms) => {
                let mut truth = Truth::False;
                for term in terms {
                    match term.truth(headers) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => truth = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                truth
            }
            Expression::And(terms) => {
                let mut truth = Truth::True;
                for term in terms {
                    match term.truth(headers) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => truth = Truth::Unknown,
                        Truth::True => {}
                    }
                }
                truth
            }
            Expression::Not(inner) => inner.truth(headers).not(),
            Expression::Compare { comparison, left, right } => {
                compare(*comparison, Value::of(left, headers), Value::of(right, headers))
            }
            Expression::Between { operand, low, high, negated } => {
                let value = Value::of(operand, headers);
                let above = compare(Comparison::GreaterOrEqual, value, Value::of(low, headers));
                let below = compare(Comparison::LessOrEqual, value, Value::of(high, headers));
                let within = match (above, below) {
                    (Truth::False, _) | (_, Truth::False) => Truth::False,
                    (Truth::True, Truth::True) => Truth::True,
                    _ => Truth::Unknown,
                };
                within.negated_if(*negated)
            }
            Expression::In { operand, list, negated } => match Value::of(operand, headers).text() {
                Some(text) => Truth::of(list.iter().any(|item| item == text)).negated_if(*negated),
                None => Truth::Unknown,
            },
            Expression::Like { operand, pattern, negated } => match Value::of(operand, headers).text() {
                Some(text) => Truth::of(like(pattern, text)).negated_if(*negated),
                None => Truth::Unknown,
            },
            Expression::IsNull { operand, negated } => {
                Truth::of(matches!(Value::of(operand, headers), Value::Null)).negated_if(*negated)
            }
            Expression::Condition(operand) => Value::of(operand, headers).boolean().map_or(Truth::Unknown, Truth::of),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    And,
    Or,
    Not,
    Between,
    In,
    Like,
    Escape,
    Is,
    Null,
    True,
    False,
}

impl Keyword {
    fn of(word: &str) -> Option<Keyword> {
        const ALL: [(&str, Keyword); 11] = [
            ("AND", Keyword::And),
            ("OR", Keyword::Or),
            ("NOT", Keyword::Not),
            ("BETWEEN", Keyword::Between),
            ("IN", Keyword::In),
            ("LIKE", Keyword::Like),
            ("ESCAPE", Keyword::Escape),
            ("IS", Keyword::Is),
            ("NULL", Keyword::Null),
            ("TRUE", Keyword::True),
            ("FALSE", Keyword::False),
        ];
        ALL.iter().find(|(name, _)| word.eq_ignore_ascii_case(name)).map(|(_, keyword)| *keyword)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    Text(String),
    Number(f64),
    Keyword(Keyword),
    Compare(Comparison),
    Sign(f64),
    Arithmetic(char),
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Identifier(name) => format!("header name {name:?}"),
            Token::Text(text) => format!("string '{text}'"),
            Token::Number(number) => format!("number {number}"),
            Token::Keyword(keyword) => format!("{keyword:?}").to_uppercase(),
            Token::Compare(_) => "comparison".to_owned(),
            Token::Sign(sign) => (if *sign < 0.0 { "'-'" } else { "'+'" }).to_owned(),
            Token::Arithmetic(operator) => format!("'{operator}'"),
            Token::Open => "'('".to_owned(),
            Token::Close => "')'".to_owned(),
            Token::Comma => "','".to_owned(),
            Token::End => "end of the selector".to_owned(),
        }
    }
}

/// The JMS header names ActiveMQ maps onto STOMP headers.
fn header_name(identifier: &str) -> String {
    match identifier {
        "JMSPriority" => "priority",
        "JMSType" => "type",
        "JMSCorrelationID" => "correlation-id",
        "JMSTimestamp" => "timestamp",
        "JMSExpiration" => "expires",
        other => other,
    }
    .to_owned()
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, SelectorError> {
    let characters: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    let error = |at: usize, reason: String| SelectorError { position: at + 1, reason };
    while at < characters.len() {
        let start = at;
        let character = characters[at];
        let token = match character {
            c if c.is_whitespace() => {
                at += 1;
                continue;
            }
            '\'' | '"' => {
                // SQL quoting: a doubled quote stands for one.
                let mut value = String::new();
                at += 1;
                loop {
                    match characters.get(at) {
                        None => {
                            let what = if character == '\'' { "string" } else { "quoted header name" };
                            return Err(error(start, format!("{what} is not closed with {character}")));
                        }
                        Some(&c) if c == character && characters.get(at + 1) == Some(&character) => {
                            value.push(c);
                            at += 2;
                        }
                        Some(&c) if c == character => {
                            at += 1;
                            break;
                        }
                        Some(&c) => {
                            value.push(c);
                            at += 1;
                        }
                    }
                }
                if character == '\'' {
                    Token::Text(value)
                } else if value.is_empty() {
                    return Err(error(start, "a quoted header name is empty".to_owned()));
                } else {
                    Token::Identifier(value)
                }
            }
            c if c.is_ascii_digit() || (c == '.' && characters.get(at + 1).is_some_and(char::is_ascii_digit)) => {
                let digits = |at: &mut usize| {
                    while characters.get(*at).is_some_and(char::is_ascii_digit) {
                        *at += 1;
                    }
                };
                digits(&mut at);
                if characters.get(at) == Some(&'.') {
                    at += 1;
                    digits(&mut at);
                }
                if matches!(characters.get(at), Some('e' | 'E')) {
                    at += 1;
                    if matches!(characters.get(at), Some('+' | '-')) {
                        at += 1;
                    }
                    if !characters.get(at).is_some_and(char::is_ascii_digit) {
                        return Err(error(at, "the exponent of a number needs digits".to_owned()));
                    }
                    digits(&mut at);
                }
                if characters.get(at).is_some_and(|c| c.is_alphanumeric() || *c == '.' || *c == '_') {
                    return Err(error(at, format!("unexpected '{}' in a number", characters[at])));
                }
                let literal: String = characters[start..at].iter().collect();
                Token::Number(literal.parse().map_err(|_| error(start, format!("{literal} is not a number")))?)
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                while characters.get(at).is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '.')) {
                    at += 1;
                }
                let word: String = characters[start..at].iter().collect();
                match Keyword::of(&word) {
                    Some(keyword) => Token::Keyword(keyword),
                    None => Token::Identifier(header_name(&word)),
                }
            }
            _ => {
                let next = characters.get(at + 1).copied();
                let (token, length) = match (character, next) {
                    ('<', Some('>')) => (Token::Compare(Comparison::NotEqual), 2),
                    ('<', Some('=')) => (Token::Compare(Comparison::LessOrEqual), 2),
                    ('>', Some('=')) => (Token::Compare(Comparison::GreaterOrEqual), 2),
                    ('<', _) => (Token::Compare(Comparison::Less), 1),
                    ('>', _) => (Token::Compare(Comparison::Greater), 1),
                    ('=', _) => (Token::Compare(Comparison::Equal), 1),
                    ('!', Some('=')) => {
                        return Err(error(start, "'!=' is not SQL; write <> for 'not equal'".to_owned()));
                    }
                    ('(', _) => (Token::Open, 1),
                    (')', _) => (Token::Close, 1),
                    (',', _) => (Token::Comma, 1),
                    ('-', _) => (Token::Sign(-1.0), 1),
                    ('+', _) => (Token::Sign(1.0), 1),
                    ('*' | '/' | '%', _) => (Token::Arithmetic(character), 1),
                    _ => return Err(error(start, format!("unexpected character '{character}'"))),
                };
                at += length;
                token
            }
        };
        if tokens.len() == MAX_TOKENS {
            return Err(error(start, format!("longer than {MAX_TOKENS} names, literals and operators")));
        }
        tokens.push((token, start + 1));
    }
    tokens.push((Token::End, characters.len() + 1));
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at].0
    }

    fn position(&self) -> usize {
        self.tokens[self.at].1
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.at].0.clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn error(&self, reason: String) -> SelectorError {
        SelectorError { position: self.position(), reason }
    }

    fn keyword(&self, keyword: Keyword) -> bool {
        *self.peek() == Token::Keyword(keyword)
    }

    fn deeper(&mut self) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        Ok(())
    }

    fn or_expression(&mut self) -> Result<Expression, SelectorError> {
        let mut terms = vec![self.and_expression()?];
        while self.keyword(Keyword::Or) {
            self.advance();
            terms.push(self.and_expression()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Expression::Or(terms) })
    }

    fn and_expression(&mut self) -> Result<Expression, SelectorError> {
        let mut terms = vec![self.not_expression()?];
        while self.keyword(Keyword::And) {
            self.advance();
            terms.push(self.not_expression()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Expression::And(terms) })
    }

    fn not_expression(&mut self) -> Result<Expression, SelectorError> {
        if self.keyword(Keyword::Not) {
            self.deeper()?;
            self.advance();
            let inner = self.not_expression()?;
            self.depth -= 1;
            return Ok(Expression::Not(Box::new(inner)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expression, SelectorError> {
        if *self.peek() == Token::Open {
            self.deeper()?;
            self.advance();
            let inner = self.or_expression()?;
            if *self.peek() != Token::Close {
                return Err(self.error(format!("expected ')', found {}", self.peek().describe())));
            }
            self.advance();
            self.depth -= 1;
            return Ok(inner);
        }
        let start = self.position();
        let operand = self.operand()?;
        let negated = self.keyword(Keyword::Not);
        if negated {
            self.advance();
            if !matches!(self.peek(), Token::Keyword(Keyword::Between | Keyword::In | Keyword::Like)) {
                return Err(
                    self.error(format!("expected BETWEEN, IN or LIKE after NOT, found {}", self.peek().describe()))
                );
            }
        }
        match self.peek().clone() {
            Token::Compare(comparison) => {
                self.advance();
                if self.keyword(Keyword::Null) {
                    return Err(
                        self.error("a comparison with NULL is never true; write IS NULL or IS NOT NULL".to_owned())
                    );
                }
                let right = self.operand()?;
                Ok(Expression::Compare { comparison, left: operand, right })
            }
            Token::Keyword(Keyword::Between) => {
                self.advance();
                let low = self.operand()?;
                if !self.keyword(Keyword::And) {
                    return Err(self.error(format!("expected AND in BETWEEN, found {}", self.peek().describe())));
                }
                self.advance();
                let high = self.operand()?;
                Ok(Expression::Between { operand, low, high, negated })
            }
            Token::Keyword(Keyword::In) => {
                self.advance();
                if *self.peek() != Token::Open {
                    return Err(self.error(format!("expected '(' after IN, found {}", self.peek().describe())));
                }
                self.advance();
                let mut list = Vec::new();
                loop {
                    match self.advance() {
                        Token::Text(text) => list.push(text),
                        other => {
                            self.at -= 1;
                            return Err(self.error(format!("IN lists strings, found {}", other.describe())));
                        }
                    }
                    match self.advance() {
                        Token::Comma => {}
                        Token::Close => break,
                        other => {
                            self.at -= 1;
                            return Err(self.error(format!("expected ',' or ')' in IN, found {}", other.describe())));
                        }
                    }
                }
                Ok(Expression::In { operand, list, negated })
            }
            Token::Keyword(Keyword::Like) => {
                self.advance();
                let pattern_position = self.position();
                let Token::Text(pattern) = self.peek().clone() else {
                    return Err(self.error(format!("LIKE needs a string pattern, found {}", self.peek().describe())));
                };
                self.advance();
                let mut escape = None;
                if self.keyword(Keyword::Escape) {
                    self.advance();
                    match self.peek().clone() {
                        Token::Text(text) if text.chars().count() == 1 => escape = text.chars().next(),
                        other => {
                            return Err(self
                                .error(format!("ESCAPE needs a string of one character, found {}", other.describe())));
                        }
                    }
                    self.advance();
                }
                let pattern = like_pattern(&pattern, escape)
                    .map_err(|reason| SelectorError { position: pattern_position, reason })?;
                Ok(Expression::Like { operand, pattern, negated })
            }
            Token::Keyword(Keyword::Is) => {
                self.advance();
                let negated = self.keyword(Keyword::Not);
                if negated {
                    self.advance();
                }
                if !self.keyword(Keyword::Null) {
                    return Err(self.error(format!("expected NULL after IS, found {}", self.peek().describe())));
                }
                self.advance();
                Ok(Expression::IsNull { operand, negated })
            }
            Token::Sign(_) | Token::Arithmetic(_) => {
                Err(self.error("arithmetic is not supported in selectors".to_owned()))
            }
            _ => match operand {
                Operand::Header(_) | Operand::Boolean(_) => Ok(Expression::Condition(operand)),
                Operand::Text(_) | Operand::Number(_) => Err(SelectorError {
                    position: start,
                    reason: "a string or number alone is not a condition; compare it with something".to_owned(),
                }),
            },
        }
    }

    fn operand(&mut self) -> Result<Operand, SelectorError> {
        match self.peek().clone() {
            Token::Identifier(name) => {
                self.advance();
                Ok(Operand::Header(name))
            }
            Token::Text(text) => {
                self.advance();
                Ok(Operand::Text(text))
            }
            Token::Number(number) => {
                self.advance();
                Ok(Operand::Number(number))
            }
            Token::Keyword(Keyword::True) => {
                self.advance();
                Ok(Operand::Boolean(true))
            }
            Token::Keyword(Keyword::False) => {
                self.advance();
                Ok(Operand::Boolean(false))
            }
            Token::Sign(sign) => {
                self.advance();
                match self.peek().clone() {
                    Token::Number(number) => {
                        self.advance();
                        Ok(Operand::Number(sign * number))
                    }
                    other => Err(self.error(format!("expected a number after the sign, found {}", other.describe()))),
                }
            }
            other => {
                Err(self.error(format!("expected a header name, a string or a number, found {}", other.describe())))
            }
        }
    }
}

fn like_pattern(pattern: &str, escape: Option<char>) -> Result<Vec<LikePart>, String> {
    let mut parts = Vec::with_capacity(pattern.len());
    let mut characters = pattern.chars();
    while let Some(character) = characters.next() {
        parts.push(match character {
            c if Some(c) == escape => match characters.next() {
                Some(escaped) => LikePart::Character(escaped),
                None => return Err("the LIKE pattern ends with its ESCAPE character".to_owned()),
            },
            '%' => LikePart::AnyMany,
            '_' => LikePart::AnyOne,
            c => LikePart::Character(c),
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        Selector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}")).matches(&headers(pairs))
    }

    fn refused(selector: &str) -> SelectorError {
        match Selector::parse(selector) {
            Ok(parsed) => panic!("{selector} parsed as {:?}", parsed.root),
            Err(error) => error,
        }
    }

    #[test]
    fn comparisons_read_headers_as_numbers_against_numeric_literals() {
        assert!(selects("price > 10", &[("price", "10.5")]));
        assert!(!selects("price > 10", &[("price", "9")]));
        assert!(selects("price = 10", &[("price", "10.0")]), "numerically equal");
        assert!(selects("price <= -1.5e1", &[("price", "-20")]));
        assert!(selects("qty <> 3", &[("qty", "4")]));
        assert!(!selects("price > 10", &[("price", "lots")]), "not a number: unknown");
        assert!(!selects("price > 10", &[("price", "inf")]), "inf is not a number here");
    }

    #[test]
    fn string_literals_compare_as_text() {
        assert!(selects("region = 'eu'", &[("region", "eu")]));
        assert!(!selects("region = 'eu'", &[("region", "EU")]));
        assert!(selects("code = '01'", &[("code", "01")]));
        assert!(!selects("code = '1'", &[("code", "01")]), "a string literal never compares as a number");
        assert!(selects("name = 'O''Brien'", &[("name", "O'Brien")]));
        assert!(selects("a = b", &[("a", "2"), ("b", "2.0")]), "two numeric headers compare as numbers");
        assert!(selects("a < b", &[("a", "apple"), ("b", "banana")]), "two text headers compare as text");
    }

    #[test]
    fn a_missing_header_is_null_and_makes_comparisons_unknown() {
        assert!(!selects("price > 10", &[]));
        assert!(!selects("NOT (price > 10)", &[]), "NOT unknown is unknown, not true");
        assert!(selects("price > 10 OR region = 'eu'", &[("region", "eu")]), "unknown OR true is true");
        assert!(!selects("price > 10 AND region = 'eu'", &[("region", "eu")]), "unknown AND true is unknown");
        assert!(selects("NOT (price > 10 AND region = 'us')", &[("region", "eu")]), "NOT (unknown AND false)");
        assert!(selects("price IS NULL", &[]));
        assert!(selects("price IS NOT NULL", &[("price", "1")]));
        assert!(!selects("price IS NOT NULL", &[]));
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_and() {
        let pairs = [("a", "1"), ("b", "0"), ("c", "1")];
        assert!(selects("a = 1 OR b = 1 AND c = 0", &pairs));
        assert!(!selects("(a = 1 OR b = 1) AND c = 0", &pairs));
        assert!(selects("NOT b = 1 AND c = 1", &pairs));
        assert!(selects("not (b = 1) and C = 1 or false", &[("b", "0"), ("C", "1")]), "keywords in any case");
    }

    #[test]
    fn in_between_like_and_their_negations() {
        assert!(selects("region IN ('eu', 'us')", &[("region", "us")]));
        assert!(!selects("region NOT IN ('eu', 'us')", &[("region", "us")]));
        assert!(!selects("region NOT IN ('eu')", &[]), "NULL NOT IN is unknown");
        assert!(selects("price BETWEEN 5 AND 10", &[("price", "10")]));
        assert!(!selects("price BETWEEN 5 AND 10", &[("price", "10.01")]));
        assert!(selects("price NOT BETWEEN 5 AND 10", &[("price", "4")]));
        assert!(selects("name LIKE 'ab%'", &[("name", "abc")]));
        assert!(selects("name LIKE '_b_'", &[("name", "abc")]));
        assert!(!selects("name LIKE '_b_'", &[("name", "abcd")]));
        assert!(!selects("name LIKE '%ü%z'", &[("name", "grüß y")]));
        assert!(selects("name LIKE '%ü%z'", &[("name", "grüßz")]));
        assert!(selects("name NOT LIKE 'x%'", &[("name", "abc")]));
        assert!(selects("name LIKE '100!%' ESCAPE '!'", &[("name", "100%")]));
        assert!(!selects("name LIKE '100!%' ESCAPE '!'", &[("name", "1000")]));
        assert!(selects("name LIKE '%a%a%a%b'", &[("name", "aaaaaaaaaaaaab")]));
        assert!(!selects("name LIKE '%a%a%a%b'", &[("name", "aaaaaaaaaaaaaa")]));
    }

    #[test]
    fn booleans_quoted_names_and_jms_names() {
        assert!(selects("urgent", &[("urgent", "true")]));
        assert!(!selects("urgent", &[("urgent", "yes")]));
        assert!(selects("urgent = TRUE", &[("urgent", "TRUE")]));
        assert!(selects("NOT urgent", &[("urgent", "false")]));
        assert!(selects("\"x-region\" = 'eu'", &[("x-region", "eu")]));
        assert!(selects("JMSPriority > 4 AND JMSType = 'order'", &[("priority", "9"), ("type", "order")]));
        assert!(selects("app.kind = 'a'", &[("app.kind", "a")]), "dots belong to names, as in ActiveMQ");
    }

    #[test]
    fn bad_expressions_are_refused_with_position_and_reason() {
        let cases: [(&str, usize, &str); 14] = [
            ("price >", 8, "expected a header name, a string or a number"),
            ("price > 10 AND", 15, "expected a header name"),
            ("region = 'eu", 10, "string is not closed"),
            ("(a = 1", 7, "expected ')'"),
            ("a = 1)", 6, "unexpected ')'"),
            ("a != 1", 3, "write <> for 'not equal'"),
            ("a = 1 + 2", 7, "unexpected '+'"),
            ("a + 1 = 2", 3, "arithmetic is not supported"),
            ("a = NULL", 5, "IS NULL"),
            ("a IN (1, 2)", 7, "IN lists strings"),
            ("a LIKE 'x' ESCAPE 'ab'", 19, "ESCAPE needs a string of one character"),
            ("a LIKE 'x!' ESCAPE '!'", 8, "ends with its ESCAPE character"),
            ("'eu'", 1, "alone is not a condition"),
            ("a = 1 # 2", 7, "unexpected character '#'"),
        ];
        for (expression, position, reason) in cases {
            let error = refused(expression);
            assert_eq!(error.position, position, "{expression}: {error}");
            assert!(error.reason.contains(reason), "{expression}: {error}");
        }
        assert_eq!(refused("a BETWEEN 1 OR 2").to_string(), "at position 13: expected AND in BETWEEN, found OR");
        assert!(refused("").reason.contains("end of the selector"));
        assert!(refused("12abc = 1").reason.contains("in a number"));
    }

    #[test]
    fn nesting_and_length_are_bounded_and_long_chains_stay_flat() {
        let deep = format!("{}a = 1{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(refused(&deep).reason.contains("nested more than"));
        let nots = format!("{}a", "NOT ".repeat(MAX_DEPTH + 1));
        assert!(refused(&nots).reason.contains("nested more than"));
        let fine = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(selects(&fine, &[("a", "1")]));
        // 1,001 ORed conditions are one flat list, not a tree 1,001 levels deep.
        let chain = vec!["a = 2"; 1000].join(" OR ") + " OR a = 1";
        assert!(selects(&chain, &[("a", "1")]));
        let too_long = vec!["a = 1"; MAX_TOKENS / 3].join(" OR ");
        let error = refused(&too_long);
        assert!(error.reason.contains("longer than 4096"), "{error}");
        assert_eq!(error.position, 9 * 1024 + 1, "the first a past the limit, term 1024: {error}");
    }
}
