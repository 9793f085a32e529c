//! TLS 1.3 record protection keys (RFC 8446 §7): the cipher suites vGPU allows, HKDF-Expand-Label, per-direction
//! traffic keys with their sequence numbers, and key updates. The AEADs are the crypto library rustls runs on.

use std::fmt;

// aws-lc-rs rather than ring: it seals from one buffer into another and opens from one buffer into another, so
// encryption and decryption replace a copy instead of adding a pass over the data (ring only works in place),
// its AES-GCM is faster here (16 KiB records: 11.3 against 9.4 GB/s sealing), and rustls on it offers the
// post-quantum hybrid key exchange X25519MLKEM768.
pub(crate) use aws_lc_rs as lib;

use lib::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use lib::hkdf;

/// Length of every TLS 1.3 AEAD nonce and IV.
pub(crate) const IV_LEN: usize = 12;
/// Longest traffic secret (SHA-384's output).
pub(crate) const MAX_SECRET: usize = 48;
/// Bytes an AEAD tag adds to every record.
pub(crate) const TAG_LEN: usize = 16;

/// The TLS 1.3 cipher suites vGPU negotiates, by their IANA code points. AES-GCM comes first: with AES-NI it
/// seals 16 KiB records 4× faster than ChaCha20-Poly1305 here (bench/NOTES.md); ChaCha20 is for CPUs without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128GcmSha256 = 0x1301,
    Aes256GcmSha384 = 0x1302,
    Chacha20Poly1305Sha256 = 0x1303,
}

impl Suite {
    pub(crate) fn from_code(code: u16) -> Option<Suite> {
        match code {
            0x1301 => Some(Suite::Aes128GcmSha256),
            0x1302 => Some(Suite::Aes256GcmSha384),
            0x1303 => Some(Suite::Chacha20Poly1305Sha256),
            _ => None,
        }
    }
    pub(crate) fn code(self) -> u16 {
        self as u16
    }
    fn aead(self) -> &'static lib::aead::Algorithm {
        match self {
            Suite::Aes128GcmSha256 => &lib::aead::AES_128_GCM,
            Suite::Aes256GcmSha384 => &lib::aead::AES_256_GCM,
            Suite::Chacha20Poly1305Sha256 => &lib::aead::CHACHA20_POLY1305,
        }
    }
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256GcmSha384 => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }
    /// Length of this suite's traffic secrets (its hash's output).
    pub(crate) fn secret_len(self) -> usize {
        match self {
            Suite::Aes256GcmSha384 => 48,
            _ => 32,
        }
    }
    /// Records sent under one key before the sender moves to the next one. RFC 8446 §5.5 bounds AES-GCM at
    /// 2^24.5 full-size records per key; this stays well below. ChaCha20-Poly1305 has no practical bound.
    pub(crate) fn records_per_key(self) -> u64 {
        match self {
            Suite::Chacha20Poly1305Sha256 => 1 << 60,
            _ => 1 << 23,
        }
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) of RFC 8446 §7.1.
pub(crate) fn expand_label(alg: hkdf::Algorithm, secret: &[u8], label: &[u8], out: &mut [u8]) -> Result<(), String> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    let out_len = (out.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0u8]];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| "HKDF-Expand-Label failed".to_string())
}

/// One direction's traffic secret, the key and IV derived from it, and the next record's sequence number.
pub(crate) struct DirectionKeys {
    suite: Suite,
    secret: [u8; MAX_SECRET],
    key: LessSafeKey,
    iv: [u8; IV_LEN],
    pub(crate) seq: u64,
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectionKeys({:?}, seq {})", self.suite, self.seq)
    }
}

impl DirectionKeys {
    /// Keys for `secret` (an application traffic secret of `suite`), starting at record `seq`.
    pub(crate) fn new(suite: Suite, secret: &[u8], seq: u64) -> Result<DirectionKeys, String> {
        if secret.len() != suite.secret_len() {
            return Err(format!(
                "traffic secret of {} bytes for {suite:?} (needs {})",
                secret.len(),
                suite.secret_len()
            ));
        }
        let mut s = [0u8; MAX_SECRET];
        s[..secret.len()].copy_from_slice(secret);
        let (key, iv) = derive(suite, secret)?;
        Ok(DirectionKeys {
            suite,
            secret: s,
            key,
            iv,
            seq,
        })
    }

    pub(crate) fn suite(&self) -> Suite {
        self.suite
    }

    /// The traffic secret (for handing the connection to another process).
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret[..self.suite.secret_len()]
    }

    /// The IV derived from the secret (compared with what rustls extracted, as a check of the derivation).
    pub(crate) fn iv(&self) -> &[u8; IV_LEN] {
        &self.iv
    }

    /// Moves to the next generation: application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd").
    pub(crate) fn update(&mut self) -> Result<(), String> {
        let len = self.suite.secret_len();
        let mut next = [0u8; MAX_SECRET];
        expand_label(self.suite.hkdf(), &self.secret[..len], b"traffic upd", &mut next[..len])?;
        let (key, iv) = derive(self.suite, &next[..len])?;
        self.secret = next;
        next.fill(0);
        self.key = key;
        self.iv = iv;
        self.seq = 0;
        Ok(())
    }

    fn nonce(&self) -> Result<Nonce, String> {
        if self.seq == u64::MAX {
            return Err("TLS record sequence number exhausted".into());
        }
        let mut n = self.iv;
        for (b, s) in n[IV_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Encrypts `inner` (content and type byte) in place; returns the tag. `header` is the record header (the AAD).
    pub(crate) fn seal(&mut self, header: &[u8; 5], inner: &mut [u8]) -> Result<[u8; TAG_LEN], String> {
        let nonce = self.nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(*header), inner)
            .map_err(|_| "TLS record encryption failed".to_string())?;
        self.seq += 1;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Encrypts `plain` followed by the `content_type` byte into `out` (`plain.len()` bytes) and `type_and_tag`
    /// (the encrypted type byte, then the tag), leaving `plain` untouched: one pass instead of a copy and a seal.
    pub(crate) fn seal_into(
        &mut self,
        header: &[u8; 5],
        plain: &[u8],
        content_type: u8,
        out: &mut [u8],
        type_and_tag: &mut [u8],
    ) -> Result<(), String> {
        let nonce = self.nonce()?;
        self.key
            .seal_out_of_place_scatter(nonce, Aad::from(*header), plain, out, &[content_type], type_and_tag)
            .map_err(|_| "TLS record encryption failed".to_string())?;
        self.seq += 1;
        Ok(())
    }

    /// Decrypts a record body (`ciphertext` then the tag) into `out` (`ciphertext` minus the tag, in length),
    /// leaving the body untouched. On failure `out` holds garbage.
    pub(crate) fn open_into(&mut self, header: &[u8; 5], body: &[u8], out: &mut [u8]) -> Result<(), String> {
        let nonce = self.nonce()?;
        let (ciphertext, tag) = body.split_at(body.len().saturating_sub(TAG_LEN));
        self.key
            .open_separate_gather(nonce, Aad::from(*header), ciphertext, tag, out)
            .map_err(|_| "a TLS record failed authentication (bad_record_mac)".to_string())?;
        self.seq += 1;
        Ok(())
    }

    /// Decrypts a record body (ciphertext and tag) in place; returns the length of the inner plaintext.
    pub(crate) fn open(&mut self, header: &[u8; 5], body: &mut [u8]) -> Result<usize, String> {
        let nonce = self.nonce()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(*header), body)
            .map_err(|_| "a TLS record failed authentication (bad_record_mac)".to_string())?
            .len();
        self.seq += 1;
        Ok(plain)
    }
}

impl Drop for DirectionKeys {
    fn drop(&mut self) {
        self.secret.fill(0);
        // SAFETY-free best effort: keep the compiler from eliding the wipe of a buffer about to be freed.
        std::hint::black_box(&self.secret);
    }
}

fn derive(suite: Suite, secret: &[u8]) -> Result<(LessSafeKey, [u8; IV_LEN]), String> {
    let mut key = [0u8; 32];
    let key_len = suite.aead().key_len();
    expand_label(suite.hkdf(), secret, b"key", &mut key[..key_len])?;
    let mut iv = [0u8; IV_LEN];
    expand_label(suite.hkdf(), secret, b"iv", &mut iv)?;
    let unbound = UnboundKey::new(suite.aead(), &key[..key_len]).map_err(|_| "bad AEAD key length".to_string());
    key.fill(0);
    Ok((LessSafeKey::new(unbound?), iv))
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = lib::digest::digest(&lib::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// RFC 8448 §3 (simple 1-RTT handshake): the server's application traffic secret and the key and IV
    /// derived from it for TLS_AES_128_GCM_SHA256.
    #[test]
    fn key_derivation_matches_rfc_8448() {
        let secret = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
        let keys = DirectionKeys::new(Suite::Aes128GcmSha256, &secret, 0).expect("keys");
        assert_eq!(keys.iv().to_vec(), hex("cf782b88dd83549aadf1e984"));
        let mut key = [0u8; 16];
        expand_label(hkdf::HKDF_SHA256, &secret, b"key", &mut key).expect("expand");
        assert_eq!(key.to_vec(), hex("9f02283b6c9c07efc26bb9f2ac92e356"));
    }

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let secret = [7u8; 32];
        let mut tx = DirectionKeys::new(Suite::Aes128GcmSha256, &secret, 5).expect("tx");
        let mut rx = DirectionKeys::new(Suite::Aes128GcmSha256, &secret, 5).expect("rx");
        let header = [23u8, 3, 3, 0, 21];
        let mut body = b"hello\x17".to_vec();
        let tag = tx.seal(&header, &mut body).expect("seal");
        body.extend_from_slice(&tag);
        let mut good = body.clone();
        assert_eq!(rx.open(&header, &mut good).expect("open"), 6);
        assert_eq!(&good[..6], b"hello\x17");
        // A flipped bit, or the same record again (the sequence number moved on), fails authentication.
        let mut replay = body.clone();
        assert!(rx.open(&header, &mut replay).is_err());
        let mut rx2 = DirectionKeys::new(Suite::Aes128GcmSha256, &secret, 5).expect("rx2");
        body[0] ^= 1;
        assert!(rx2.open(&header, &mut body).is_err());
        // After an update both sides agree again, and the old key no longer opens anything.
        tx.update().expect("update");
        rx.update().expect("update");
        assert_eq!(tx.seq, 0);
        let mut body = b"x\x17".to_vec();
        let tag = tx.seal(&header, &mut body).expect("seal");
        body.extend_from_slice(&tag);
        assert_eq!(rx.open(&header, &mut body).expect("open after update"), 2);
        assert!(DirectionKeys::new(Suite::Aes256GcmSha384, &secret, 0).is_err());
        // Out-of-place sealing and opening produce and accept the same records as the in-place forms.
        let mut body = vec![0u8; 5 + 17];
        let (ct, type_and_tag) = body.split_at_mut(5);
        tx.seal_into(&header, b"abcde", 23, ct, type_and_tag)
            .expect("seal into");
        let mut inner = [0u8; 6];
        rx.open_into(&header, &body, &mut inner).expect("open into");
        assert_eq!(&inner, b"abcde\x17");
        let mut again = body.clone();
        assert!(rx.open(&header, &mut again).is_err(), "sequence numbers moved on");
    }
}
