//! The streaming decoder. (API fixed; implementation in progress.)

use bytes::BytesMut;

use crate::{DecodeError, Frame, Limits, Version};

/// What one call to [`Decoder::decode`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One EOL seen between frames: a heart-beat.
    HeartBeat,
}

/// A streaming STOMP decoder. See the crate documentation.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Version,
}

impl Decoder {
    /// A decoder that unescapes with STOMP 1.2 rules until told the negotiated version.
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, version: Version::V1_2 }
    }

    /// Sets the escaping rules for frames after CONNECT/CONNECTED.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The version whose escaping rules apply.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes at most one item from the front of `buf`, removing its bytes.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame; call again with more bytes
    /// appended. Bytes already scanned are not scanned again.
    ///
    /// # Errors
    /// Any [`DecodeError`]; the stream cannot continue after one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        let _ = (buf, &self.limits);
        todo!("codec implementation")
    }
}
