//! What a sender relay can read of an outgoing RIST main-profile datagram:
//! whether it carries media (RTP) and, if so, its RTP sequence number and
//! whether librist sent it as a retransmission.
//!
//! The relays need this to steer retransmissions and to say which link lost
//! what; librist tells neither. The layout (VSF TR-06-2, reduced overhead):
//! a GRE header (flags, protocol type 0x88B6, then the key field when
//! encrypted, then the GRE sequence number), the reduced header (virtual
//! source and destination port: even for RTP, odd for RTCP), then RTP, whose
//! SSRC has its lowest bit set on a retransmission (TR-06-1).
//!
//! With a PSK, everything after the GRE header is AES-CTR encrypted: the key
//! is PBKDF2-HMAC-SHA256 of the passphrase salted with the 4-byte nonce the
//! GRE key field carries (1024 iterations), the first counter block is zero
//! but for the GRE sequence number (big-endian, at byte 0 from RIST GRE
//! version 1, at byte 12 before). Only the first counter block is needed (the
//! reduced and RTP headers are its 16 bytes), and only a copy is decrypted:
//! the datagram leaves exactly as librist wrote it. A key is derived once per
//! nonce, which librist changes only when it rotates keys.

use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use sha2::Sha256;

use crate::psk::Psk;

/// GRE protocol type of RIST's reduced-overhead mode.
const PROTO_REDUCED: u16 = 0x88B6;
/// PBKDF2 iterations the RIST PSK scheme fixes.
const PBKDF2_ROUNDS: u32 = 1024;
/// GRE flag bits in the first byte: checksum, key, sequence number.
const GRE_CHECKSUM: u8 = 0x80;
const GRE_KEY: u8 = 0x20;
const GRE_SEQ: u8 = 0x10;
/// Reduced header (4 bytes) plus RTP header (12 bytes): one AES block.
const HEADERS: usize = 16;

/// A media datagram as the relay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Media {
    /// RTP sequence number.
    pub seq: u16,
    /// librist sent it again because the receiver asked (a NACK).
    pub retransmit: bool,
}

/// An AES key schedule of either size RIST uses.
enum Cipher {
    Aes128(Box<aes::Aes128>),
    Aes256(Box<aes::Aes256>),
}

impl Cipher {
    fn encrypt(&self, block: &mut [u8; HEADERS]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Cipher::Aes128(c) => c.encrypt_block(b),
            Cipher::Aes256(c) => c.encrypt_block(b),
        }
    }
}

/// Reads datagrams of one sender; keeps the key of the last nonce seen.
pub(crate) struct Reader {
    passphrase: Option<Vec<u8>>,
    /// Nonce, key size in bits, and its key schedule.
    key: Option<([u8; 4], u32, Cipher)>,
}

impl Reader {
    /// A reader for a sender with this PSK (`None`: sends in clear).
    pub fn new(psk: Option<&Psk>) -> Self {
        Self {
            passphrase: psk.map(|p| p.expose().as_bytes().to_vec()),
            key: None,
        }
    }

    /// The datagram's RTP sequence number and retransmission flag, or `None`
    /// for anything that is not media (RTCP, keepalives, a short datagram).
    pub fn media(&mut self, d: &[u8]) -> Option<Media> {
        let (flags1, flags2) = (*d.first()?, *d.get(1)?);
        if flags2 & 0x07 != 0 || u16::from_be_bytes([*d.get(2)?, *d.get(3)?]) != PROTO_REDUCED {
            return None;
        }
        let mut at = 4;
        if flags1 & GRE_CHECKSUM != 0 {
            at += 4;
        }
        let nonce = if flags1 & GRE_KEY != 0 {
            let n: [u8; 4] = d.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(n)
        } else {
            None
        };
        let gre_seq = if flags1 & GRE_SEQ != 0 {
            let s: [u8; 4] = d.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            s
        } else {
            [0; 4]
        };
        let mut h: [u8; HEADERS] = d.get(at..at + HEADERS)?.try_into().ok()?;
        if let Some(nonce) = nonce {
            let version = (flags2 >> 3) & 0x07;
            // From version 1 the H bit says 256-bit; before, the key size is
            // configured, and ours is always 256.
            let bits = if version >= 1 && flags2 & 0x40 == 0 {
                128
            } else {
                256
            };
            let mut block = [0u8; HEADERS];
            let off = if version >= 1 { 0 } else { 12 };
            block[off..off + 4].copy_from_slice(&gre_seq);
            self.cipher(nonce, bits)?.encrypt(&mut block);
            for (x, k) in h.iter_mut().zip(block) {
                *x ^= k;
            }
        }
        let dst_port = u16::from_be_bytes([h[2], h[3]]);
        let rtp = &h[4..];
        if dst_port & 1 != 0 || rtp[0] >> 6 != 2 {
            return None;
        }
        Some(Media {
            seq: u16::from_be_bytes([rtp[2], rtp[3]]),
            retransmit: rtp[11] & 1 == 1,
        })
    }

    /// The key schedule for `nonce`, derived when the nonce changes.
    fn cipher(&mut self, nonce: [u8; 4], bits: u32) -> Option<&Cipher> {
        let pass = self.passphrase.as_deref()?;
        if !matches!(&self.key, Some((n, b, _)) if *n == nonce && *b == bits) {
            let mut k = [0u8; 32];
            let k = &mut k[..bits as usize / 8];
            pbkdf2::pbkdf2_hmac::<Sha256>(pass, &nonce, PBKDF2_ROUNDS, k);
            let c = if bits == 128 {
                Cipher::Aes128(Box::new(aes::Aes128::new_from_slice(k).ok()?))
            } else {
                Cipher::Aes256(Box::new(aes::Aes256::new_from_slice(k).ok()?))
            };
            self.key = Some((nonce, bits, c));
        }
        self.key.as_ref().map(|(_, _, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clear reduced-mode datagram: GRE with sequence, reduced header, RTP.
    fn clear(seq: u16, ssrc: u32, dst_port: u16) -> Vec<u8> {
        let mut d = vec![GRE_SEQ, 0, 0x88, 0xB6, 0, 0, 0, 7];
        d.extend_from_slice(&1968u16.to_be_bytes());
        d.extend_from_slice(&dst_port.to_be_bytes());
        d.extend_from_slice(&[0x80, 33]);
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&ssrc.to_be_bytes());
        d.extend_from_slice(&[0x47; 188]);
        d
    }

    #[test]
    fn reads_sequence_and_retransmit_flag_in_clear() {
        let mut r = Reader::new(None);
        let m = r.media(&clear(4711, 0x1234_5670, 1968)).unwrap();
        assert_eq!(
            m,
            Media {
                seq: 4711,
                retransmit: false
            }
        );
        let m = r.media(&clear(4711, 0x1234_5671, 1968)).unwrap();
        assert!(m.retransmit);
        // RTCP (odd port), other protocol types, short datagrams: not media.
        assert_eq!(r.media(&clear(1, 0, 1969)), None);
        let mut ka = clear(1, 0, 1968);
        ka[3] = 0xB5;
        assert_eq!(r.media(&ka), None);
        assert_eq!(r.media(&clear(1, 0, 1968)[..12]), None);
        assert_eq!(r.media(&[]), None);
    }

    #[test]
    fn decrypts_the_headers_of_an_encrypted_datagram() {
        // Encrypt the way the scheme says (version 1, 256-bit, nonce in the
        // key field), then read it back.
        let psk = Psk::new("correct horse battery staple").unwrap();
        let plain = clear(500, 0xAAAA_AAA1, 1968);
        let nonce = [0x12, 0x34, 0x56, 0x78];
        let gre_seq = [0, 0, 1, 2];
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(psk.expose().as_bytes(), &nonce, 1024, &mut key);
        let mut block = [0u8; 16];
        block[..4].copy_from_slice(&gre_seq);
        aes::Aes256::new_from_slice(&key)
            .unwrap()
            .encrypt_block(GenericArray::from_mut_slice(&mut block));
        let mut d = vec![GRE_KEY | GRE_SEQ, (1 << 3) | 0x40, 0x88, 0xB6];
        d.extend_from_slice(&nonce);
        d.extend_from_slice(&gre_seq);
        d.extend(plain[8..24].iter().zip(block).map(|(p, k)| p ^ k));
        d.extend_from_slice(&[0xEE; 100]);
        let mut r = Reader::new(Some(&psk));
        assert_eq!(
            r.media(&d),
            Some(Media {
                seq: 500,
                retransmit: true
            })
        );
        // A reader with the wrong passphrase sees garbage, never a panic.
        let wrong = Psk::new("another passphrase entirely").unwrap();
        let _ = Reader::new(Some(&wrong)).media(&d);
        // Without a passphrase, an encrypted datagram cannot be read.
        assert_eq!(Reader::new(None).media(&d), None);
    }
}
