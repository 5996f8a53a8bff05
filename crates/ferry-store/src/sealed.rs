//! Secrets kept encrypted at rest (the secret keys of SDK-HMAC access keys):
//! ChaCha20-Poly1305 under the server's key, bound to the row they belong
//! to, so that a copy of the database alone reveals none of them and a value
//! moved to another row does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::{Error, Result};

/// Prefix of a sealed value: `sealed:v1:<hex nonce><hex ciphertext>`.
const PREFIX: &str = "sealed:v1:";

/// The server's key for secrets at rest (32 bytes).
#[derive(Clone)]
pub struct SecretKey(Key);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(Key::from(bytes))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// Parse the 64 hex digits of a key file (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(Self::from_bytes(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_slice())
    }

    /// Seal `secret`, bound to `context` (the row's id).
    pub(crate) fn seal(&self, secret: &str, context: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = ChaCha20Poly1305::new(&self.0)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret.as_bytes(), aad: context.as_bytes() })
            .expect("encrypting in memory cannot fail");
        format!("{PREFIX}{}{}", hex::encode(nonce), hex::encode(sealed))
    }
}

/// Whether a stored value is sealed (rows written before sealing are not).
pub(crate) fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The secret in a stored value: sealed ones need the key they were sealed with.
pub(crate) fn open(key: Option<&SecretKey>, stored: &str, context: &str) -> Result<String> {
    let Some(body) = stored.strip_prefix(PREFIX) else {
        return Ok(stored.to_string());
    };
    let wrong = || {
        Error::Sealed(format!(
            "the sealed secret of {context:?} does not open with this server's key; \
             every node must use the same secret key file"
        ))
    };
    let key =
        key.ok_or_else(|| Error::Sealed(format!("the secret of {context:?} is sealed and no key is set")))?;
    let raw = hex::decode(body).map_err(|_| wrong())?;
    if raw.len() < 12 {
        return Err(wrong());
    }
    let (nonce, sealed) = raw.split_at(12);
    let plain = ChaCha20Poly1305::new(&key.0)
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: context.as_bytes() })
        .map_err(|_| wrong())?;
    String::from_utf8(plain).map_err(|_| wrong())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_row() {
        let key = SecretKey::generate();
        let sealed = key.seal("s3cr3t", "AK1");
        assert!(is_sealed(&sealed) && !sealed.contains("s3cr3t"));
        assert_ne!(sealed, key.seal("s3cr3t", "AK1"), "a fresh nonce each time");
        assert_eq!(open(Some(&key), &sealed, "AK1").unwrap(), "s3cr3t");
        assert!(open(Some(&key), &sealed, "AK2").is_err(), "bound to its row");
        assert!(open(Some(&SecretKey::generate()), &sealed, "AK1").is_err(), "another key");
        assert!(open(None, &sealed, "AK1").is_err());
        assert_eq!(open(None, "plain", "AK1").unwrap(), "plain", "rows from before sealing");
        let last = if sealed.ends_with('0') { '1' } else { '0' };
        let tampered = format!("{}{last}", &sealed[..sealed.len() - 1]);
        assert!(open(Some(&key), &tampered, "AK1").is_err());
        assert_eq!(SecretKey::from_hex(&key.to_hex()).unwrap().to_hex(), key.to_hex());
        assert!(SecretKey::from_hex("abc").is_none());
    }
}
