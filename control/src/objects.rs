//! Secrets and configs: named blobs a service's tasks see as files.
//!
//! A secret's data is sealed (AES-256-GCM) with the cluster's data key
//! before it is proposed, so the Raft log, snapshots and the store hold
//! only ciphertext; the key lives beside the store, in a file of its own on
//! each manager (`control/data.key`), never in it. Configs are not secret
//! and are stored as they are.

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Docker's limit for one secret or config.
pub const MAX_DATA: usize = 500 * 1024;
/// Per kind, in the whole cluster.
pub const MAX_OBJECTS: usize = 1000;
/// All data of one kind together: every manager holds it in memory and in
/// every snapshot.
pub const MAX_TOTAL: u64 = 64 << 20;
pub const MAX_LABELS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// Bytes of data (plaintext).
    pub size: u64,
    pub data: Blob,
    /// Several objects share a name, one per version (a stack deploy whose
    /// file changed makes the next); a plain create makes version 1.
    #[serde(default = "first_version")]
    pub version: u64,
}

fn first_version() -> u64 {
    1
}

/// An object's data as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "enc", rename_all = "lowercase")]
pub enum Blob {
    Plain {
        b64: String,
    },
    /// Sealed with the data key `key_id` names (a digest of the key).
    Sealed {
        key_id: String,
        nonce: String,
        ct: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ObjError {
    #[error("{0}")]
    Invalid(String),
    #[error("this manager has no data key for secrets ({0}); it gets one when it joins or is promoted: demote and promote it again")]
    NoKey(String),
    #[error("secret {0} does not open with this manager's data key (a key from another swarm?)")]
    Open(String),
    #[error("{path}: {err}")]
    KeyFile { path: String, err: String },
    #[error("Swarm is encrypted and needs to be unlocked before it can be used. Please use \"apiary swarm unlock\" to unlock it.")]
    Locked,
    #[error("invalid unlock key: it does not open this manager's key (give the key printed by `swarm init --autolock` or the last `swarm unlock-key --rotate`, as SWMKEY-1-…)")]
    BadUnlockKey,
}

/// Docker's rule for secret and config names.
pub fn valid_name(kind: Kind, name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {} name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            kind.word()
        ))
    }
}

pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 256 || k.chars().any(|c| c.is_whitespace() || c == '=') {
            return Err(format!(
                "invalid label name {k:?}: 1 to 256 characters, no spaces or '='"
            ));
        }
        if v.len() > 4096 {
            return Err(format!("label {k}: value longer than 4096 bytes"));
        }
    }
    Ok(())
}

pub fn check_size(kind: Kind, name: &str, len: usize) -> Result<(), String> {
    if len == 0 {
        return Err(format!(
            "{} {name} is empty: give it some data",
            kind.word()
        ));
    }
    if len > MAX_DATA {
        return Err(format!(
            "{} {name} is {len} bytes: the limit is {MAX_DATA} bytes (500 KiB)",
            kind.word()
        ));
    }
    Ok(())
}

/// A service's use of a secret or config: which one, where its file goes
/// in the task, and its owner and mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The object's name.
    pub source: String,
    /// Secrets: a path under `/run/secrets`; configs: an absolute path.
    pub target: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Docker's default is 0444.
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// The object's version (`None`: the latest when the task is given
    /// its data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

fn default_mode() -> u32 {
    0o444
}

/// The most secrets or configs one service uses.
pub const MAX_REFS: usize = 64;

impl FileRef {
    /// Docker's `--secret` / `--config` value: `NAME`, or
    /// `source=NAME,target=PATH,uid=0,gid=0,mode=0444`.
    pub fn parse(kind: Kind, s: &str) -> Result<FileRef, String> {
        let flag = format!("--{}", kind.word());
        let mut source = None;
        let mut target = None;
        let (mut uid, mut gid, mut mode) = (0, 0, default_mode());
        if !s.contains('=') {
            source = Some(s.to_string());
        } else {
            for part in s.split(',') {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| format!("invalid {flag} {s:?}: {part:?} is not KEY=VALUE"))?;
                let num = |v: &str| {
                    v.parse::<u32>()
                        .map_err(|_| format!("invalid {flag} {s:?}: {k} must be a number"))
                };
                match k {
                    "source" | "src" => source = Some(v.to_string()),
                    "target" | "dst" | "destination" => target = Some(v.to_string()),
                    "uid" => uid = num(v)?,
                    "gid" => gid = num(v)?,
                    "mode" => {
                        mode = u32::from_str_radix(v.trim_start_matches("0o"), 8).map_err(|_| {
                            format!("invalid {flag} {s:?}: mode is octal, like 0440")
                        })?
                    }
                    _ => {
                        return Err(format!(
                            "invalid {flag} {s:?}: unknown field {k:?} (source, target, uid, gid, mode)"
                        ));
                    }
                }
            }
        }
        let source = source.ok_or_else(|| format!("invalid {flag} {s:?}: source is required"))?;
        let target = target.unwrap_or_else(|| Self::default_target(kind, &source));
        let r = FileRef {
            source,
            target,
            uid,
            gid,
            mode,
            version: None,
        };
        r.check(kind)?;
        Ok(r.normalized(kind))
    }

    /// Where an object lands without a target, as Docker puts it: a
    /// secret under /run/secrets by its name, a config at `/NAME`.
    pub fn default_target(kind: Kind, source: &str) -> String {
        match kind {
            Kind::Secret => source.to_string(),
            Kind::Config => format!("/{source}"),
        }
    }

    /// A secret's target as a path under /run/secrets (`/run/secrets/x`
    /// and `x` are the same file).
    pub fn normalized(mut self, kind: Kind) -> Self {
        if kind == Kind::Secret {
            if let Some(rel) = self.target.strip_prefix("/run/secrets/") {
                self.target = rel.to_string();
            }
        }
        self
    }

    /// Where the file may go: inside `/run/secrets` for a secret, an
    /// absolute path for a config; never `..`, never a mode beyond 0777.
    pub fn check(&self, kind: Kind) -> Result<(), String> {
        valid_name(kind, &self.source)?;
        let t = &self.target;
        let rel = match kind {
            Kind::Secret => t.strip_prefix("/run/secrets/").unwrap_or(t),
            Kind::Config => t
                .strip_prefix('/')
                .ok_or_else(|| format!("config target {t:?} must be an absolute path"))?,
        };
        let ok = !rel.is_empty()
            && rel.len() <= 255
            && !rel.starts_with('/')
            && rel
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && !rel.contains('\0');
        if !ok {
            return Err(match kind {
                Kind::Secret => format!(
                    "invalid secret target {t:?}: a file name under /run/secrets, without `..`"
                ),
                Kind::Config => {
                    format!("invalid config target {t:?}: an absolute path without `..`")
                }
            });
        }
        if self.mode > 0o777 {
            return Err(format!(
                "{} {}: mode {:o} is above 0777",
                kind.word(),
                self.source,
                self.mode
            ));
        }
        Ok(())
    }
}

impl FileRef {
    /// Whether this reference uses `o`, `latest` being the newest version
    /// of `o`'s name.
    pub fn uses(&self, o: &Object, latest: u64) -> bool {
        self.source == o.name && self.version.unwrap_or(latest) == o.version
    }
}

fn aad(kind: Kind, id: &str) -> String {
    format!("apiary/{}/{id}", kind.word())
}

/// The key that seals secrets. 32 random bytes.
pub struct DataKey {
    key: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id())
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // The key does not linger in freed memory.
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl Clone for DataKey {
    fn clone(&self) -> Self {
        Self { key: self.key }
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the kernel's random numbers");
        Self { key }
    }

    /// Which key this is, without telling it: a digest's first bytes.
    pub fn id(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest([b"apiary-data-key-id:".as_slice(), &self.key].concat());
        hex_short(&d[..8])
    }

    pub fn to_b64(&self) -> String {
        B64.encode(self.key)
    }

    pub fn from_b64(s: &str) -> Result<Self, String> {
        let v = B64
            .decode(s.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        let key: [u8; 32] = v.try_into().map_err(|_| "not a 32-byte key".to_string())?;
        Ok(Self { key })
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).expect("a 32-byte key"))
    }

    pub fn seal(&self, kind: Kind, id: &str, plain: &[u8]) -> Blob {
        self.seal_aad(&aad(kind, id), plain)
    }

    /// Seals anything else the store keeps secret (the CA key, the unlock
    /// key), bound to what it is by `aad`.
    pub fn seal_aad(&self, aad: &str, plain: &[u8]) -> Blob {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the kernel's random numbers");
        let mut buf = plain.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .expect("sealing fits in memory");
        Blob::Sealed {
            key_id: self.id(),
            nonce: B64.encode(nonce),
            ct: B64.encode(buf),
        }
    }

    pub fn open(&self, o: &Object) -> Result<Vec<u8>, ObjError> {
        self.open_aad(&aad(o.kind, &o.id), &o.data)
            .map_err(|_| ObjError::Open(o.name.clone()))
    }

    /// Opens what `seal_aad` sealed with the same `aad`.
    pub fn open_aad(&self, aad: &str, blob: &Blob) -> Result<Vec<u8>, ObjError> {
        match blob {
            Blob::Plain { b64 } => B64
                .decode(b64)
                .map_err(|_| ObjError::Invalid(format!("{aad}: stored data is not base64"))),
            Blob::Sealed { nonce, ct, .. } => {
                let fail = || ObjError::Open(aad.to_string());
                let nonce: [u8; NONCE_LEN] = B64
                    .decode(nonce)
                    .ok()
                    .and_then(|n| n.try_into().ok())
                    .ok_or_else(fail)?;
                let mut buf = B64.decode(ct).map_err(|_| fail())?;
                let plain = self
                    .aead()
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad.as_bytes()),
                        &mut buf,
                    )
                    .map_err(|_| fail())?;
                Ok(plain.to_vec())
            }
        }
    }

    /// A config's data, or a secret's with `key`.
    pub fn open_with(key: Option<&DataKey>, o: &Object) -> Result<Vec<u8>, ObjError> {
        match (&o.data, key) {
            (Blob::Plain { b64 }, _) => B64.decode(b64).map_err(|_| {
                ObjError::Invalid(format!(
                    "{} {}: stored data is not base64",
                    o.kind.word(),
                    o.name
                ))
            }),
            (Blob::Sealed { .. }, Some(k)) => k.open(o),
            (Blob::Sealed { .. }, None) => Err(ObjError::NoKey(o.name.clone())),
        }
    }

    /// Reads the key file a manager keeps beside its store: the key
    /// itself, or (autolock) the key sealed with the operator's unlock key.
    pub fn load(path: &Path, unlock: Option<&UnlockKey>) -> Result<Option<Self>, ObjError> {
        let err = |e: String| ObjError::KeyFile {
            path: path.display().to_string(),
            err: e,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        match text.trim().strip_prefix(SEALED_PREFIX) {
            None => Self::from_b64(&text).map(Some).map_err(err),
            Some(sealed) => {
                let Some(u) = unlock else {
                    return Err(ObjError::Locked);
                };
                let blob: Blob = serde_json::from_str(sealed).map_err(|e| err(e.to_string()))?;
                let plain =
                    u.0.open_aad(KEY_FILE_AAD, &blob)
                        .map_err(|_| ObjError::BadUnlockKey)?;
                Self::from_b64(&String::from_utf8_lossy(&plain))
                    .map(Some)
                    .map_err(err)
            }
        }
    }

    /// Writes the key file: sealed with `unlock` (autolock) or as it is.
    pub fn save(&self, path: &Path, unlock: Option<&UnlockKey>) -> Result<(), ObjError> {
        let text = match unlock {
            None => self.to_b64(),
            Some(u) => format!(
                "{SEALED_PREFIX}{}",
                serde_json::to_string(&u.0.seal_aad(KEY_FILE_AAD, self.to_b64().as_bytes()))
                    .expect("a blob serializes")
            ),
        };
        crate::private_fs::write_private(path, text.as_bytes()).map_err(|e| ObjError::KeyFile {
            path: path.display().to_string(),
            err: e.to_string(),
        })
    }

    /// Whether the key file at `path` is sealed (autolock).
    pub fn file_is_sealed(path: &Path) -> bool {
        std::fs::read_to_string(path).is_ok_and(|t| t.trim().starts_with(SEALED_PREFIX))
    }
}

const SEALED_PREFIX: &str = "sealed:";
const KEY_FILE_AAD: &str = "apiary/data-key-file";
/// What the unlock key is sealed under in the state.
const UNLOCK_KEY_AAD: &str = "apiary/unlock-key";
/// What the CA key is sealed under in the state.
pub const CA_KEY_AAD: &str = "apiary/ca-key";

/// The operator's key for an autolocked swarm (Docker's `SWMKEY-1-…`):
/// it seals each manager's data key file, and a restarted manager waits
/// for it (`swarm unlock`).
#[derive(Clone)]
pub struct UnlockKey(DataKey);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(…)")
    }
}

const UNLOCK_PREFIX: &str = "SWMKEY-1-";

impl UnlockKey {
    pub fn generate() -> Self {
        UnlockKey(DataKey::generate())
    }

    pub fn show(&self) -> String {
        format!("{UNLOCK_PREFIX}{}", self.0.to_b64())
    }

    pub fn parse(s: &str) -> Result<Self, ObjError> {
        let k = s
            .trim()
            .strip_prefix(UNLOCK_PREFIX)
            .ok_or(ObjError::BadUnlockKey)?;
        DataKey::from_b64(k)
            .map(UnlockKey)
            .map_err(|_| ObjError::BadUnlockKey)
    }

    pub fn id(&self) -> String {
        self.0.id()
    }

    /// The key as the state keeps it: sealed with the data key.
    pub fn seal(&self, key: &DataKey) -> Blob {
        key.seal_aad(UNLOCK_KEY_AAD, self.show().as_bytes())
    }

    /// What `seal` made, opened.
    pub fn open(blob: &Blob, key: &DataKey) -> Result<UnlockKey, ObjError> {
        let text = key.open_aad(UNLOCK_KEY_AAD, blob)?;
        UnlockKey::parse(&String::from_utf8_lossy(&text))
    }
}

fn hex_short(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Plain data for configs.
pub fn plain(data: &[u8]) -> Blob {
    Blob::Plain {
        b64: B64.encode(data),
    }
}

pub fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    B64.decode(s)
        .map_err(|e| format!("data is not base64: {e}"))
}

pub fn b64_encode(b: &[u8]) -> String {
    B64.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: Kind, id: &str, data: Blob) -> Object {
        Object {
            id: id.into(),
            name: "pw".into(),
            kind,
            labels: BTreeMap::new(),
            created_at: 0,
            updated_at: 0,
            size: 0,
            data,
            version: 1,
        }
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_its_id() {
        let k = DataKey::generate();
        let blob = k.seal(Kind::Secret, "id1", b"password123");
        let text = serde_json::to_string(&blob).unwrap();
        assert!(!text.contains("password123"));
        assert_eq!(
            k.open(&obj(Kind::Secret, "id1", blob.clone())).unwrap(),
            b"password123"
        );
        assert!(
            k.open(&obj(Kind::Secret, "id2", blob.clone())).is_err(),
            "moved to another object"
        );
        assert!(
            k.open(&obj(Kind::Config, "id1", blob.clone())).is_err(),
            "moved to another kind"
        );
        assert!(
            DataKey::generate()
                .open(&obj(Kind::Secret, "id1", blob))
                .is_err(),
            "another key"
        );
    }

    #[test]
    fn file_refs_as_dockers_flags_write_them() {
        let r = FileRef::parse(Kind::Secret, "my_password").unwrap();
        assert_eq!(
            (r.source.as_str(), r.target.as_str(), r.mode),
            ("my_password", "my_password", 0o444)
        );
        let r = FileRef::parse(
            Kind::Secret,
            "source=pw,target=/run/secrets/db/pw,uid=999,mode=0400",
        )
        .unwrap();
        assert_eq!((r.target.as_str(), r.uid, r.mode), ("db/pw", 999, 0o400));
        let c = FileRef::parse(
            Kind::Config,
            "source=nginx.conf,target=/etc/nginx/nginx.conf",
        )
        .unwrap();
        assert_eq!(c.target, "/etc/nginx/nginx.conf");
        assert_eq!(FileRef::parse(Kind::Config, "app").unwrap().target, "/app");
        for bad in [
            "source=pw,target=../../etc/shadow",
            "source=pw,target=/etc/shadow",
            "source=pw,target=a/./b",
            "source=pw,mode=4755",
            "source=pw,mode=9",
            "source=pw,color=red",
            "target=x",
            "source=../x",
        ] {
            assert!(FileRef::parse(Kind::Secret, bad).is_err(), "{bad}");
        }
        assert!(FileRef::parse(Kind::Config, "source=c,target=relative").is_err());
    }

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["my_password", "a", "db.pw-2"] {
            assert!(valid_name(Kind::Secret, ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "-x", "x-", "a/b", "a b", &"x".repeat(65)] {
            assert!(valid_name(Kind::Secret, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_file_is_private_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("apiary-dk-{}", std::process::id()));
        crate::private_fs::create_private_dir(&dir).unwrap();
        let path = dir.join("data.key");
        let k = DataKey::generate();
        k.save(&path, None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(DataKey::load(&path, None).unwrap().unwrap().id(), k.id());
        // Autolock: sealed with the unlock key, which it then needs.
        let u = UnlockKey::generate();
        k.save(&path, Some(&u)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&k.to_b64()));
        assert!(DataKey::file_is_sealed(&path));
        assert!(matches!(DataKey::load(&path, None), Err(ObjError::Locked)));
        let other = UnlockKey::generate();
        assert!(matches!(
            DataKey::load(&path, Some(&other)),
            Err(ObjError::BadUnlockKey)
        ));
        let again = UnlockKey::parse(&u.show()).unwrap();
        assert_eq!(
            DataKey::load(&path, Some(&again)).unwrap().unwrap().id(),
            k.id()
        );
        assert!(UnlockKey::parse("SWMKEY-1-nope").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
