//! BEGIN, COMMIT and ABORT.
//!
//! A transaction buffers the SENDs and ACK/NACKs that name it, already checked, and replays
//! them in order at COMMIT; ABORT (or the end of the connection) drops them. Buffers are
//! bounded three ways, each by its own configuration key: frames in one transaction, body bytes
//! in one transaction, and body bytes in all open transactions of a connection, besides the
//! number of open transactions. A transaction that is never committed so cannot hold unbounded
//! memory.

use stampede_protocol::{ByteString, Command, Frame};

use super::request::{AckRequest, SendRequest};
use super::{Reply, Session};
use crate::error::StompError;

/// Frames buffered by an open transaction, replayed at COMMIT.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    frames: Vec<Frame>,
    bytes: usize,
}

impl Session {
    /// Buffers `frame` in transaction `tx` if it names one; returns whether it did.
    pub(super) fn buffer_in_transaction(&mut self, frame: &Frame, tx: Option<&ByteString>) -> Result<bool, StompError> {
        let Some(tx) = tx else {
            return Ok(false);
        };
        let (max_frames, max_bytes) = (self.config.max_transaction_frames, self.config.max_transaction_bytes);
        let Some(buffered) = self.transactions.get_mut(tx) else {
            return Err(StompError::new(
                format!("unknown transaction {tx:?}"),
                format!(
                    "{} names transaction {tx:?}, which was not begun on this connection (or was already committed or aborted).",
                    frame.command
                ),
            ));
        };
        if buffered.frames.len() >= max_frames {
            return Err(StompError::limit("frames in one transaction", max_frames, "max_transaction_frames"));
        }
        if buffered.bytes + frame.body.len() > max_bytes {
            return Err(StompError::limit("body bytes in one transaction", max_bytes, "max_transaction_bytes"));
        }
        let all_bytes = self.config.max_transaction_bytes_per_connection;
        if self.transaction_bytes + frame.body.len() > all_bytes {
            return Err(StompError::limit(
                "body bytes in all open transactions of a connection",
                all_bytes,
                "max_transaction_bytes_per_connection",
            ));
        }
        self.transaction_bytes += frame.body.len();
        buffered.bytes += frame.body.len();
        buffered.frames.push(frame.clone());
        Ok(true)
    }

    pub(super) fn begin(&mut self, tx: &ByteString) -> Result<(), StompError> {
        if self.transactions.contains_key(tx) {
            return Err(StompError::new(
                format!("transaction {tx:?} already begun"),
                "Transaction ids must be unique among the open transactions of a connection.",
            ));
        }
        if self.transactions.len() >= self.config.max_transactions {
            return Err(StompError::limit(
                "open transactions per connection",
                self.config.max_transactions,
                "max_transactions_per_connection",
            ));
        }
        self.transactions.insert(tx.clone(), Transaction::default());
        Ok(())
    }

    fn take_transaction(&mut self, command: Command, tx: &ByteString) -> Result<Vec<Frame>, StompError> {
        let taken = self.transactions.remove(tx);
        if let Some(transaction) = &taken {
            self.transaction_bytes -= transaction.bytes;
        }
        taken.map(|t| t.frames).ok_or_else(|| {
            StompError::new(
                format!("unknown transaction {tx:?}"),
                format!("{command} names transaction {tx:?}, which is not open on this connection."),
            )
        })
    }

    /// Replays the transaction's frames in order. A SEND that fails now (its queue refused it)
    /// ends the session with an ERROR for the COMMIT.
    pub(super) async fn commit(
        &mut self,
        frame: &Frame,
        tx: &ByteString,
        replies: &mut Vec<Reply>,
    ) -> Result<(), StompError> {
        for buffered in self.take_transaction(frame.command, tx)? {
            // Both were read when buffered, so reading them again cannot fail.
            let replayed = match buffered.command {
                Command::Send => match SendRequest::read(&buffered) {
                    Ok(send) => self.send(send, replies).await.map(drop),
                    Err(error) => Err(error),
                },
                _ => AckRequest::read(&buffered).map(|ack| self.ack(ack)),
            };
            replayed.map_err(|e| e.for_frame(frame))?;
        }
        Ok(())
    }

    pub(super) fn abort(&mut self, command: Command, tx: &ByteString) -> Result<(), StompError> {
        self.take_transaction(command, tx).map(drop)
    }
}
