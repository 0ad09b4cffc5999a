//! Bounds the decoder enforces while a frame is still arriving.
//!
//! Each limit is checked as soon as the bytes that break it are seen, never after buffering the
//! whole oversized input: a 1 GiB body announced by `content-length` is refused when the header
//! is read, and a header line with no end is refused once it passes the line limit.

/// Caller-chosen limits. The defaults follow what RabbitMQ (4 MiB frames) and vert.x (10 KiB
/// header lines, 1000 headers) ship, so clients that work there work here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest header line in bytes, without its EOL. The command line counts as a header line.
    /// Default 10,240.
    pub max_header_line: usize,
    /// Most header entries in one frame (duplicates count). Default 1,000.
    pub max_headers: usize,
    /// Most bytes from the start of the command to the blank line ending the headers.
    /// Default 64 KiB.
    pub max_header_bytes: usize,
    /// Largest body in bytes. Default 4 MiB.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_header_line: 10 * 1024, max_headers: 1000, max_header_bytes: 64 * 1024, max_body: 4 * 1024 * 1024 }
    }
}
