//! `secret create|ls|inspect|rm` and `config …`, on the leader. A secret's
//! data is sealed here, before it is proposed, and no answer carries it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::model::{now_ms, Command};
use crate::node::Joined;
use crate::objects::{self, Kind, Object};
use crate::tls::random_hex;

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct CreateObject {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The data, base64.
    pub data: String,
    /// Make the next version of an existing name (a changed stack file)
    /// instead of refusing the name.
    #[serde(default)]
    pub new_version: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ObjectView {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub size: u64,
    #[serde(default = "one")]
    pub version: u64,
    /// Services that use it.
    pub used_by: Vec<String>,
    /// A config's data (base64); never a secret's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

fn one() -> u64 {
    1
}

fn view(s: &crate::model::ClusterState, o: &Object, with_data: bool) -> ObjectView {
    let data = match (&o.data, with_data) {
        (objects::Blob::Plain { b64 }, true) => Some(b64.clone()),
        _ => None,
    };
    ObjectView {
        id: o.id.clone(),
        name: o.name.clone(),
        labels: o.labels.clone(),
        created_at: o.created_at,
        updated_at: o.updated_at,
        size: o.size,
        version: o.version,
        used_by: {
            let latest = s.latest_version(o.kind, &o.name).unwrap_or(o.version);
            s.services
                .values()
                .filter(|svc| svc.spec.refs(o.kind).iter().any(|r| r.uses(o, latest)))
                .map(|svc| svc.spec.name.clone())
                .collect()
        },
        data,
    }
}

pub async fn create(j: &Joined, kind: Kind, req: CreateObject) -> Reply {
    let bad = ApiError::BadRequest;
    objects::valid_name(kind, &req.name).map_err(bad)?;
    objects::check_labels(&req.labels).map_err(bad)?;
    // Refused before decoding: base64 of the largest allowed data.
    if req.data.len() > objects::MAX_DATA.div_ceil(3) * 4 + 4 {
        return Err(ApiError::TooLarge(format!(
            "{} {} is larger than {} bytes (500 KiB)",
            kind.word(),
            req.name,
            objects::MAX_DATA
        )));
    }
    let plain = objects::b64_decode(&req.data).map_err(bad)?;
    objects::check_size(kind, &req.name, plain.len()).map_err(|e| {
        if plain.len() > objects::MAX_DATA {
            ApiError::TooLarge(e)
        } else {
            ApiError::BadRequest(e)
        }
    })?;
    let id = random_hex(12);
    let data = match kind {
        Kind::Secret => j
            .data_key()
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .seal(kind, &id, &plain),
        Kind::Config => objects::plain(&plain),
    };
    let now = now_ms();
    let m = j.manager();
    let latest =
        m.sm.read(|a| a.state.find_object(kind, &req.name).ok().cloned());
    let version = match latest {
        Some(old) if req.new_version => {
            // Only the stack that made a name may version it.
            const NS: &str = "com.docker.stack.namespace";
            let owner = old.labels.get(NS);
            if owner.is_none() || owner != req.labels.get(NS) {
                return Err(ApiError::Conflict(format!(
                    "{} {} exists and is not part of stack {}: a stack makes new versions of its own {}s only",
                    kind.word(),
                    req.name,
                    req.labels.get(NS).map_or("(none)", String::as_str),
                    kind.word()
                )));
            }
            old.version + 1
        }
        _ => 1,
    };
    let o = Object {
        version,
        id: id.clone(),
        name: req.name,
        kind,
        labels: req.labels,
        created_at: now,
        updated_at: now,
        size: plain.len() as u64,
        data,
    };
    m.sm.read(|a| a.state.object_fits(&o)).map_err(|e| {
        if e.ends_with("already exists") {
            ApiError::Conflict(e)
        } else {
            ApiError::BadRequest(e)
        }
    })?;
    m.write(Command::CreateObject(o)).await?;
    ok(&id)
}

pub async fn list(j: &Joined, kind: Kind) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    let v: Vec<ObjectView> = m.sm.read(|a| {
        a.state
            .objects(kind)
            .values()
            .map(|o| view(&a.state, o, false))
            .collect()
    });
    ok(&v)
}

pub async fn inspect(j: &Joined, kind: Kind, name: &str) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    m.sm.read(|a| match a.state.find_object(kind, name) {
        Ok(o) => ok(&view(&a.state, o, true)),
        Err(e) => Err(ApiError::NotFound(e)),
    })
}

/// `DELETE …/{id}` removes that version; `DELETE …/{name}` every version
/// of the name. Refused whole while a service uses any of them.
pub async fn remove(j: &Joined, kind: Kind, name: &str) -> Reply {
    let m = j.manager();
    let (ids, shown) = m.sm.read(|a| {
        let s = &a.state;
        let all = s.objects(kind);
        // A name means every version of it; an id (or an id's prefix) the
        // one object it names.
        let chosen: Vec<&Object> = if all.values().any(|x| x.name == name) {
            all.values().filter(|x| x.name == name).collect()
        } else {
            vec![s.find_object(kind, name).map_err(ApiError::NotFound)?]
        };
        for o in &chosen {
            if let Some(svc) = s.version_user(o) {
                return Err(ApiError::Conflict(format!(
                    "{} {} is in use by the following service: {svc}",
                    kind.word(),
                    o.name
                )));
            }
        }
        Ok((
            chosen.iter().map(|o| o.id.clone()).collect::<Vec<_>>(),
            chosen.first().map(|o| o.name.clone()).unwrap_or_default(),
        ))
    })?;
    for id in ids {
        m.write(Command::RemoveObject { kind, id }).await?;
    }
    ok(&shown)
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LabelsRequest {
    pub labels: BTreeMap<String, String>,
    /// The `updated_at` the change was made from: refused when the object
    /// has changed since.
    #[serde(default)]
    pub updated_at: Option<u64>,
}

/// A secret's or config's labels, the one thing of it that may change
/// (its data makes a new object).
pub async fn set_labels(j: &Joined, kind: Kind, name: &str, req: LabelsRequest) -> Reply {
    objects::check_labels(&req.labels).map_err(ApiError::BadRequest)?;
    let m = j.manager();
    let o =
        m.sm.read(|a| a.state.find_object(kind, name).cloned())
            .map_err(ApiError::NotFound)?;
    if let Some(at) = req.updated_at.filter(|at| *at != o.updated_at) {
        return Err(ApiError::Conflict(format!(
            "update out of sequence: {} {} is at version {}, not {at}; read it again and retry",
            kind.word(),
            o.name,
            o.updated_at
        )));
    }
    m.write(Command::SetObjectLabels {
        kind,
        id: o.id.clone(),
        labels: req.labels,
        at_updated: o.updated_at,
        at: now_ms(),
    })
    .await?;
    m.sm.read(|a| match a.state.objects(kind).get(&o.id) {
        Some(o) => ok(&view(&a.state, o, false)),
        None => Err(ApiError::NotFound(format!(
            "{} {name} not found",
            kind.word()
        ))),
    })
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct SameRequest {
    /// Base64.
    pub data: String,
}

/// Whether `data` is what the newest version of `name` holds (`stack
/// deploy` asks before making a new version); the data itself never
/// comes back.
pub async fn same(j: &Joined, kind: Kind, name: &str, req: SameRequest) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    let o =
        m.sm.read(|a| a.state.find_object(kind, name).cloned())
            .map_err(ApiError::NotFound)?;
    let given = objects::b64_decode(&req.data).map_err(ApiError::BadRequest)?;
    let key = match kind {
        Kind::Secret => Some(
            j.data_key()
                .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        ),
        Kind::Config => None,
    };
    let have = objects::DataKey::open_with(key.as_ref(), &o)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let same = have.len() == given.len()
        && have
            .iter()
            .zip(&given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    ok(&same)
}
