//! The envelope around every MQTT payload: a protocol version (postcard
//! varint) followed by the postcard encoding of the message. The version is
//! read first, so a peer speaking another version gets a clear error.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest payload either side accepts (an inventory of a busy device is a
/// few KiB; anything near this is a fault or an attack).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// Empty, or no version could be read.
    #[error("payload has no protocol version")]
    NoVersion,
    /// A version this build does not speak.
    #[error("protocol version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// The body does not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left over after the message.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes a message in the current protocol version.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = postcard::to_stdvec(&PROTOCOL_VERSION).expect("a u16 always encodes");
    out.extend(postcard::to_stdvec(msg).expect("protocol messages always encode"));
    out
}

/// Decodes a payload, checking size, version and that nothing is left over.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let (version, rest) =
        postcard::take_from_bytes::<u16>(payload).map_err(|_| DecodeError::NoVersion)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (msg, rest) =
        postcard::take_from_bytes::<T>(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_envelopes() {
        let ok = encode(&(7u32, "x".to_string()));
        assert_eq!(decode::<(u32, String)>(&ok).unwrap(), (7, "x".to_string()));
        assert_eq!(decode::<(u32, String)>(&[]), Err(DecodeError::NoVersion));
        let mut other = postcard::to_stdvec(&(PROTOCOL_VERSION + 1)).unwrap();
        other.extend(&ok[1..]);
        assert_eq!(
            decode::<(u32, String)>(&other),
            Err(DecodeError::UnsupportedVersion(PROTOCOL_VERSION + 1))
        );
        assert!(matches!(
            decode::<(u32, String)>(&ok[..ok.len() - 1]),
            Err(DecodeError::Malformed(_))
        ));
        let mut long = ok.clone();
        long.push(0);
        assert_eq!(
            decode::<(u32, String)>(&long),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            decode::<(u32, String)>(&vec![1; MAX_PAYLOAD + 1]),
            Err(DecodeError::TooLarge(MAX_PAYLOAD + 1))
        );
    }
}
