//! CA keys held in a PKCS#11 token (a hardware security module, or SoftHSM2): the private key
//! never leaves the token; certificates and cross-signatures are signed by it, through the
//! `ExternalKey` seam of the core (feature `pkcs11`).
//!
//! A key is named where its PEM would be stored, by an RFC 7512 URI:
//! `pkcs11:token=<token label>;object=<key label>` (`id=%01` may replace or narrow `object`).
//! The URI holds no secret; the user PIN is given to the manager apart (a file or an
//! environment variable, never the command line). Only ECDSA P-256 keys are used: the token
//! signs the SHA-256 digest (`CKM_ECDSA`) and the raw `r ‖ s` it returns is DER-encoded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use swarmca_core::rootca::{ExternalKey, ExternalKeys, PKCS11_SCHEME};
use zeroize::Zeroizing;

/// What an RFC 7512 URI names (the attributes swarmca uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyUri {
    /// `token=`: the token's label.
    pub token: Option<String>,
    /// `object=`: the key's label.
    pub object: Option<String>,
    /// `id=`: the key's CKA_ID.
    pub id: Option<Vec<u8>>,
}

/// Parses the path attributes of a `pkcs11:` URI (percent-encoding decoded; the query part,
/// such as `?pin-value=`, is refused: the PIN is never put in a URI stored in the cluster).
pub fn parse_uri(uri: &str) -> Result<KeyUri, String> {
    let rest = uri.strip_prefix("pkcs11:").ok_or("a PKCS#11 URI starts with pkcs11:")?;
    if rest.contains('?') {
        return Err("a PKCS#11 URI for swarmca carries no query (give the PIN with --pkcs11-pin-file)".into());
    }
    let mut out = KeyUri::default();
    for part in rest.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} is not attribute=value"))?;
        let v = percent_decode(v)?;
        match k {
            "token" => out.token = Some(String::from_utf8(v).map_err(|_| "token label is not UTF-8")?),
            "object" => out.object = Some(String::from_utf8(v).map_err(|_| "object label is not UTF-8")?),
            "id" => out.id = Some(v),
            // Other RFC 7512 attributes (manufacturer, serial, type, ...) narrow nothing here.
            "type" if v != b"private" => return Err("the URI must name a private key (type=private)".into()),
            _ => {}
        }
    }
    if out.object.is_none() && out.id.is_none() {
        return Err("the URI names no key: give object=<label> or id=<%xx bytes>".into());
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "bad %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Ok(out)
}

/// The keys of one PKCS#11 module, logged in with the user PIN.
pub struct Pkcs11Keys {
    finder: Arc<Finder>,
    /// Keys already found, by URI: one session each, kept open.
    found: Mutex<HashMap<Vec<u8>, Arc<Pkcs11Key>>>,
}

impl std::fmt::Debug for Pkcs11Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Keys").finish_non_exhaustive()
    }
}

/// The module, the PIN, and whether the token has refused that PIN already.
struct Finder {
    ctx: Pkcs11,
    pin: Zeroizing<String>,
    /// Set once the token refuses the PIN: it is never offered again (tokens lock their PIN
    /// after a few failures, and every retry would count).
    pin_refused: AtomicBool,
}

impl Pkcs11Keys {
    /// Loads and initializes the module at `module` (e.g. /usr/lib/softhsm/libsofthsm2.so).
    pub fn open(module: &Path, pin: Zeroizing<String>) -> Result<Pkcs11Keys, String> {
        let ctx = Pkcs11::new(module)
            .map_err(|e| format!("cannot load the PKCS#11 module {}: {e}", module.display()))?;
        ctx.initialize(CInitializeArgs::OsThreads)
            .map_err(|e| format!("cannot initialize the PKCS#11 module {}: {e}", module.display()))?;
        let finder = Finder { ctx, pin, pin_refused: AtomicBool::new(false) };
        Ok(Pkcs11Keys { finder: Arc::new(finder), found: Mutex::new(HashMap::new()) })
    }
}

impl Finder {
    /// A logged-in session on the token `want` names, and its key there.
    fn session_and_key(&self, want: &KeyUri) -> Result<(Session, ObjectHandle), String> {
        if self.pin_refused.load(Ordering::SeqCst) {
            return Err(
                "the token refused the PIN before; it is not offered again (restart with the right PIN)"
                    .into(),
            );
        }
        let slots =
            self.ctx.get_slots_with_token().map_err(|e| format!("PKCS#11: cannot list tokens: {e}"))?;
        let slot = slots
            .into_iter()
            .find(|s| {
                let label = self.ctx.get_token_info(*s).map(|t| t.label().trim_end().to_string());
                want.token.as_ref().is_none_or(|w| label.as_deref().is_ok_and(|l| l == w))
            })
            .ok_or_else(|| format!("no PKCS#11 token labelled {:?}", want.token.as_deref().unwrap_or("")))?;
        let session =
            self.ctx.open_ro_session(slot).map_err(|e| format!("PKCS#11: cannot open a session: {e}"))?;
        let pin = AuthPin::new(self.pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            // Another session of this process already logged in to the token.
            Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e @ cryptoki::error::Error::Pkcs11(RvError::PinIncorrect | RvError::PinLocked, _)) => {
                self.pin_refused.store(true, Ordering::SeqCst);
                return Err(format!("PKCS#11: the token refused the PIN: {e}"));
            }
            Err(e) => return Err(format!("PKCS#11: login to the token failed: {e}")),
        }
        let key = find_one(&session, ObjectClass::PRIVATE_KEY, want)?
            .ok_or_else(|| format!("no EC private key {} in the token", describe(want)))?;
        Ok((session, key))
    }

    fn find(self: &Arc<Self>, uri: &str) -> Result<Arc<Pkcs11Key>, String> {
        let want = parse_uri(uri)?;
        let (session, key) = self.session_and_key(&want)?;
        let public = public_point(&session, &want)?;
        Ok(Arc::new(Pkcs11Key { finder: self.clone(), want, state: Mutex::new((session, key)), public }))
    }
}

/// The one EC object of `class` that `want` names (`None` when there is none).
fn find_one(session: &Session, class: ObjectClass, want: &KeyUri) -> Result<Option<ObjectHandle>, String> {
    let mut template = vec![Attribute::Class(class), Attribute::KeyType(KeyType::EC)];
    if let Some(o) = &want.object {
        template.push(Attribute::Label(o.as_bytes().to_vec()));
    }
    if let Some(id) = &want.id {
        template.push(Attribute::Id(id.clone()));
    }
    let handles = session.find_objects(&template).map_err(|e| format!("PKCS#11: search failed: {e}"))?;
    match handles.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(format!("several EC keys match {} in the token; add id= to the URI", describe(want))),
    }
}

fn describe(k: &KeyUri) -> String {
    match (&k.object, &k.id) {
        (Some(o), _) => format!("labelled {o:?}"),
        (None, Some(id)) => format!("with id {}", hex::encode(id)),
        (None, None) => String::new(),
    }
}

/// The key's public point: CKA_EC_POINT of the matching public-key object (a DER OCTET STRING
/// around the uncompressed point), or empty when the token keeps none (the CA's test signature
/// then proves the key belongs to the certificate).
fn public_point(session: &Session, want: &KeyUri) -> Result<Vec<u8>, String> {
    let Some(h) = find_one(session, ObjectClass::PUBLIC_KEY, want)? else { return Ok(Vec::new()) };
    let attrs = session
        .get_attributes(h, &[AttributeType::EcPoint])
        .map_err(|e| format!("PKCS#11: cannot read the public key: {e}"))?;
    let point = attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    });
    Ok(match point {
        // DER OCTET STRING (short form: 65 bytes) around 04 ‖ X ‖ Y.
        Some(p) if p.len() == 67 && p.starts_with(&[0x04, 0x41]) => p.get(2..).unwrap_or_default().to_vec(),
        Some(p) => p,
        None => Vec::new(),
    })
}

impl ExternalKeys for Pkcs11Keys {
    fn resolve(&self, reference: &[u8]) -> Option<Result<Arc<dyn ExternalKey>, String>> {
        if !reference.starts_with(PKCS11_SCHEME) {
            return None;
        }
        if let Some(k) = self.found.lock().unwrap_or_else(|e| e.into_inner()).get(reference) {
            return Some(Ok(k.clone() as Arc<dyn ExternalKey>));
        }
        let uri = match std::str::from_utf8(reference) {
            Ok(u) => u.trim(),
            Err(_) => return Some(Err("the PKCS#11 URI is not UTF-8".into())),
        };
        // Found outside the lock: a slow token does not hold up other keys' lookups.
        Some(self.finder.find(uri).map(|k| {
            self.found.lock().unwrap_or_else(|e| e.into_inner()).insert(reference.to_vec(), k.clone());
            k as Arc<dyn ExternalKey>
        }))
    }
}

/// One key in a token, with the session it signs through (opened again, and logged in again,
/// when the token drops it: a restarted HSM, a token pulled and put back).
pub struct Pkcs11Key {
    finder: Arc<Finder>,
    want: KeyUri,
    state: Mutex<(Session, ObjectHandle)>,
    public: Vec<u8>,
}

impl ExternalKey for Pkcs11Key {
    fn public_key(&self) -> Option<Vec<u8>> {
        (!self.public.is_empty()).then(|| self.public.clone())
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let digest = ring::digest::digest(&ring::digest::SHA256, msg);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let first = state.0.sign(&Mechanism::Ecdsa, state.1, digest.as_ref());
        let raw = match first {
            Ok(raw) => raw,
            Err(cryptoki::error::Error::Pkcs11(
                RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
                _,
            )) => {
                *state = self.finder.session_and_key(&self.want)?;
                state
                    .0
                    .sign(&Mechanism::Ecdsa, state.1, digest.as_ref())
                    .map_err(|e| format!("the token refused to sign: {e}"))?
            }
            Err(e) => return Err(format!("the token refused to sign: {e}")),
        };
        ecdsa_der(&raw)
    }
}

/// `r ‖ s` (two 32-byte big-endian integers) as DER `SEQUENCE { INTEGER r, INTEGER s }`.
fn ecdsa_der(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.len() != 64 {
        return Err(format!("the token returned a {}-byte ECDSA signature; expected 64 (P-256)", raw.len()));
    }
    let (r, s) = raw.split_at(32);
    let int = |v: &[u8]| {
        let v = match v.iter().position(|&b| b != 0) {
            Some(i) => v.get(i..).unwrap_or_default(),
            None => &[0u8][..],
        };
        let mut out = vec![0x02];
        let pad = v.first().is_some_and(|&b| b & 0x80 != 0);
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests;
