//! Secrets sealed at rest: envelope encryption of every private key swarmca stores.
//!
//! Two levels of keys, as in SwarmKit and every KMS:
//!
//! * the cluster's **data key** ([`DataKey`], 32 random bytes) seals the secrets kept in the
//!   cluster record: the root CA's private key, a rotation's new key, the unlock key;
//! * a **key-encryption key** ([`Kek`]) wraps the data key, and seals each manager's own TLS key
//!   file. It is derived from the unlock key when autolock is on, and otherwise from a secret
//!   kept beside the store (a local key file, or the seal key given to every manager of an etcd
//!   cluster).
//!
//! Sealing is AES-256-GCM from *ring*; each purpose ([`Purpose`]) gets its own AES key, derived
//! from the data key or the KEK with HKDF-SHA256, and every sealed value is bound by its
//! associated data to the cluster it belongs to and to what it is (a sealed CA key cannot be
//! passed off as an unlock key, nor moved to another cluster). Nonces are 96 random bits from
//! the caller's [`Entropy`]. Each write of the cluster record seals each of its few secrets
//! again: even millions of writes stay far below the 2^32 messages a key may seal with random
//! 96-bit nonces.
//!
//! A sealed value is a PEM block (`-----BEGIN SWARMCA SEALED CA KEY-----`, …) whose body is
//! `version (1 byte) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`, so it can sit in the byte fields
//! that held the clear PEM before and is recognisable at a glance.
//!
//! Key bytes live in [`Zeroizing`] buffers, are wiped when dropped, and never print: the
//! `Debug` of every key type shows its purpose only.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::entropy::Entropy;

/// Length of a data key, a KEK secret, and an unlock key.
pub const KEY_LEN: usize = 32;

/// Version byte of the sealed format.
const VERSION: u8 = 1;

/// HKDF salt of every key derived here (domain separation from any other use of the secrets).
const SALT: &[u8] = b"swarmca seal v1";

/// What a sealed value is: chooses its AES key (by HKDF info), its associated data and its PEM
/// label. Changing a label or an info string makes every stored value unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A root CA's private key (the current root's, or a rotation's new one), under the data key.
    CaKey,
    /// The manager unlock key, under the data key (leaders hand it to managers that ask).
    UnlockKey,
    /// The cluster's data key, wrapped under the KEK.
    DataKey,
    /// A manager's own TLS private key file, under the KEK.
    NodeKey,
}

impl Purpose {
    /// What the value is, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::CaKey => "CA key",
            Purpose::UnlockKey => "unlock key",
            Purpose::DataKey => "data key",
            Purpose::NodeKey => "node key",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Purpose::CaKey => "SWARMCA SEALED CA KEY",
            Purpose::UnlockKey => "SWARMCA SEALED UNLOCK KEY",
            Purpose::DataKey => "SWARMCA WRAPPED DATA KEY",
            Purpose::NodeKey => "SWARMCA SEALED NODE KEY",
        }
    }

    fn info(self) -> &'static [u8] {
        match self {
            Purpose::CaKey => b"ca-key",
            Purpose::UnlockKey => b"unlock-key",
            Purpose::DataKey => b"data-key",
            Purpose::NodeKey => b"node-key",
        }
    }
}

/// Why a sealed value could not be opened (or a key not read).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not a sealed value of this purpose (another PEM label, or no PEM at all).
    #[error("not a sealed {what}: {detail}")]
    Format {
        /// What was expected.
        what: &'static str,
        /// What was found.
        detail: String,
    },
    /// Authentication failed: the wrong key, another cluster's value, or altered bytes.
    #[error("cannot open the sealed {what}: wrong key, another cluster's value, or damaged data")]
    WrongKey {
        /// What was being opened.
        what: &'static str,
    },
    /// The entropy source failed while drawing a nonce or a key.
    #[error("{0}")]
    Entropy(String),
    /// An unlock key or a key file that is not in the expected format.
    #[error("{0}")]
    BadKey(String),
}

impl From<crate::entropy::EntropyError> for SealError {
    fn from(e: crate::entropy::EntropyError) -> Self {
        SealError::Entropy(e.to_string())
    }
}

/// 32 secret bytes, wiped on drop, never printed.
#[derive(Clone)]
struct Secret(Zeroizing<[u8; KEY_LEN]>);

impl Secret {
    fn draw(entropy: &mut dyn Entropy) -> Result<Secret, SealError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        entropy.fill(k.as_mut()).map_err(|e| SealError::Entropy(e.to_string()))?;
        Ok(Secret(k))
    }

    /// Reads `prefix` and 32 bytes in standard base64 (padding optional), surrounding
    /// whitespace ignored; `what` and `missing_prefix` make the errors.
    fn from_text(text: &str, prefix: &str, what: &str, missing_prefix: String) -> Result<Secret, SealError> {
        use base64::Engine as _;
        let rest = text.trim().strip_prefix(prefix).ok_or(SealError::BadKey(missing_prefix))?;
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(rest.trim_end_matches('='))
                .map_err(|_| SealError::BadKey(format!("the {what} is not valid base64 after its prefix")))?,
        );
        Secret::from_slice(&raw)
            .ok_or_else(|| SealError::BadKey(format!("a {what} has {KEY_LEN} bytes, not {}", raw.len())))
    }

    /// `prefix` and the bytes in standard base64 without padding.
    fn to_text(&self, prefix: &str) -> Zeroizing<String> {
        use base64::Engine as _;
        let mut s = Zeroizing::new(String::from(prefix));
        base64::engine::general_purpose::STANDARD_NO_PAD.encode_string(self.0.as_ref(), &mut s);
        s
    }

    fn from_slice(b: &[u8]) -> Option<Secret> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        if b.len() != KEY_LEN {
            return None;
        }
        k.copy_from_slice(b);
        Some(Secret(k))
    }

    /// The AES-256-GCM key for `purpose`, derived from this secret.
    fn aead_key(&self, purpose: Purpose) -> Result<LessSafeKey, SealError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(self.0.as_ref());
        let info = [purpose.info()];
        // `expand` fails only when asked for more than 255 hash lengths; `From<Okm>` takes
        // exactly the AEAD's key length (32 bytes).
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| SealError::BadKey("HKDF-SHA256 refused to derive a key".into()))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    fn seal(
        &self,
        purpose: Purpose,
        cluster_id: &str,
        plaintext: &[u8],
        entropy: &mut dyn Entropy,
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        entropy.fill(&mut nonce).map_err(|e| SealError::Entropy(e.to_string()))?;
        let mut body = Zeroizing::new(Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16));
        body.push(VERSION);
        body.extend_from_slice(&nonce);
        let mut in_out = Zeroizing::new(plaintext.to_vec());
        let sealed = self.aead_key(purpose)?.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(purpose, cluster_id)),
            &mut *in_out,
        );
        if sealed.is_err() {
            // *ring* refuses only inputs longer than AES-GCM's limit (64 GiB).
            return Err(SealError::BadKey("value too long to seal".into()));
        }
        body.extend_from_slice(&in_out);
        Ok(crate::pemutil::encode(purpose.label(), &body))
    }

    fn open(
        &self,
        purpose: Purpose,
        cluster_id: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let what = purpose.name();
        let block = match crate::pemutil::decode(sealed) {
            Some((b, _)) if b.label == purpose.label() => b,
            Some((b, _)) => {
                return Err(SealError::Format { what, detail: format!("a PEM block of type {:?}", b.label) })
            }
            None => return Err(SealError::Format { what, detail: "no PEM block".into() }),
        };
        let body = block.der;
        if body.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Format { what, detail: format!("{} bytes is too short", body.len()) });
        }
        let (version, rest) = body.split_at(1);
        if version != [VERSION] {
            return Err(SealError::Format { what, detail: format!("unknown version {version:?}") });
        }
        let (nonce_bytes, _) = rest.split_at(NONCE_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(nonce_bytes);
        let mut in_out = Zeroizing::new(rest.get(NONCE_LEN..).unwrap_or_default().to_vec());
        let n = self
            .aead_key(purpose)?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(purpose, cluster_id)),
                &mut in_out,
            )
            .map_err(|_| SealError::WrongKey { what })?
            .len();
        in_out.truncate(n);
        Ok(in_out)
    }
}

/// The associated data of a sealed value: the format, what it is, and its cluster.
fn aad(purpose: Purpose, cluster_id: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + cluster_id.len());
    a.extend_from_slice(SALT);
    a.push(0);
    a.extend_from_slice(purpose.info());
    a.push(0);
    a.extend_from_slice(cluster_id.as_bytes());
    a
}

/// Whether `bytes` is a sealed value of any purpose (rather than, say, a clear PEM key written
/// by an older version).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(b"-----BEGIN SWARMCA ")
}

/// A key type over [`Secret`]: cloned, compared in constant time, drawn at random, and never
/// printed (its `Debug` shows its name only).
macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Secret);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }

        impl $name {
            /// A new random key.
            pub fn generate(entropy: &mut dyn Entropy) -> Result<$name, SealError> {
                Secret::draw(entropy).map($name)
            }

            /// Whether two keys are the same (in constant time).
            pub fn same_as(&self, other: &$name) -> bool {
                bool::from(self.0 .0.as_ref().ct_eq(other.0 .0.as_ref()))
            }
        }
    };
}

secret_type! {
    /// The cluster's data key: seals the secrets of the cluster record.
    DataKey
}

impl DataKey {
    /// Seals `plaintext` (a [`Purpose::CaKey`] or [`Purpose::UnlockKey`]) for `cluster_id`.
    pub fn seal(
        &self,
        purpose: Purpose,
        cluster_id: &str,
        plaintext: &[u8],
        entropy: &mut dyn Entropy,
    ) -> Result<Vec<u8>, SealError> {
        self.0.seal(purpose, cluster_id, plaintext, entropy)
    }

    /// Opens a value sealed by [`DataKey::seal`].
    pub fn open(
        &self,
        purpose: Purpose,
        cluster_id: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.0.open(purpose, cluster_id, sealed)
    }
}

/// Where a key-encryption key comes from (recorded beside the wrapped data key, so a manager
/// knows what to ask for before it can open anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekSource {
    /// A secret kept beside the store: the local key file of the embedded store, or the seal
    /// key every manager of an etcd cluster is given.
    SealKey,
    /// The manager unlock key (autolock on): a restarted manager stays locked until given it.
    UnlockKey,
}

/// A key-encryption key: wraps the data key and seals the manager's own TLS key.
#[derive(Clone)]
pub struct Kek {
    secret: Secret,
    source: KekSource,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({:?}, ..)", self.source)
    }
}

impl Kek {
    /// The KEK of a seal key (the bytes of a key file, see [`parse_seal_key`]).
    pub fn from_seal_key(key: &SealKey) -> Kek {
        Kek { secret: key.0.clone(), source: KekSource::SealKey }
    }

    /// The KEK of an unlock key.
    pub fn from_unlock_key(key: &UnlockKey) -> Kek {
        Kek { secret: key.0.clone(), source: KekSource::UnlockKey }
    }

    /// Where this KEK comes from.
    pub fn source(&self) -> KekSource {
        self.source
    }

    /// Whether two KEKs are the same key from the same source (in constant time).
    pub fn same_as(&self, other: &Kek) -> bool {
        self.source == other.source && bool::from(self.secret.0.as_ref().ct_eq(other.secret.0.as_ref()))
    }

    /// The data key wrapped under this KEK, for the record of `cluster_id`.
    pub fn wrap(
        &self,
        dek: &DataKey,
        cluster_id: &str,
        entropy: &mut dyn Entropy,
    ) -> Result<Vec<u8>, SealError> {
        self.secret.seal(Purpose::DataKey, cluster_id, dek.0 .0.as_ref(), entropy)
    }

    /// Unwraps a data key wrapped by [`Kek::wrap`].
    pub fn unwrap(&self, wrapped: &[u8], cluster_id: &str) -> Result<DataKey, SealError> {
        let raw = self.secret.open(Purpose::DataKey, cluster_id, wrapped)?;
        Secret::from_slice(&raw)
            .map(DataKey)
            .ok_or_else(|| SealError::Format { what: "data key", detail: format!("{} bytes", raw.len()) })
    }

    /// Seals a manager's own TLS private key (PEM) for its file.
    pub fn seal_node_key(
        &self,
        cluster_id: &str,
        key_pem: &[u8],
        entropy: &mut dyn Entropy,
    ) -> Result<Vec<u8>, SealError> {
        self.secret.seal(Purpose::NodeKey, cluster_id, key_pem, entropy)
    }

    /// Opens a key sealed by [`Kek::seal_node_key`].
    pub fn open_node_key(&self, cluster_id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.secret.open(Purpose::NodeKey, cluster_id, sealed)
    }
}

/// Prefix of a human-readable unlock key (SwarmKit's format: `SWMKEY-1-` and the 32 key bytes
/// in standard base64 without padding).
pub const UNLOCK_KEY_PREFIX: &str = "SWMKEY-1-";

secret_type! {
    /// A manager unlock key.
    UnlockKey
}

impl UnlockKey {
    /// The key from its 32 raw bytes (as sealed in the cluster record).
    pub fn from_bytes(b: &[u8]) -> Result<UnlockKey, SealError> {
        Secret::from_slice(b)
            .map(UnlockKey)
            .ok_or_else(|| SealError::BadKey(format!("an unlock key has {KEY_LEN} bytes, not {}", b.len())))
    }

    /// Parses the human-readable form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<UnlockKey, SealError> {
        let missing = format!("an unlock key starts with {UNLOCK_KEY_PREFIX}");
        Secret::from_text(text, UNLOCK_KEY_PREFIX, "unlock key", missing).map(UnlockKey)
    }

    /// The human-readable form.
    pub fn to_text(&self) -> Zeroizing<String> {
        self.0.to_text(UNLOCK_KEY_PREFIX)
    }

    /// The raw bytes (to seal under the data key).
    pub fn bytes(&self) -> &[u8] {
        self.0 .0.as_ref()
    }
}

/// Prefix of a seal key file's content.
pub const SEAL_KEY_PREFIX: &str = "SWARMCA-SEAL-KEY-1-";

secret_type! {
    /// A seal key: the secret, kept beside the store, that wraps the data key when autolock is off.
    SealKey
}

impl SealKey {
    /// Parses a key file's content: `SWARMCA-SEAL-KEY-1-` and 32 bytes in base64 (standard,
    /// padding optional), surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<SealKey, SealError> {
        let missing = format!(
            "a seal key file holds one line starting with {SEAL_KEY_PREFIX} (make one with `swarmca seal-key generate`)"
        );
        Secret::from_text(text, SEAL_KEY_PREFIX, "seal key", missing).map(SealKey)
    }

    /// The key file's content (one line, with its newline).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut s = self.0.to_text(SEAL_KEY_PREFIX);
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests;
