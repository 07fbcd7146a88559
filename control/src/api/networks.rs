//! `network create|ls|inspect|rm`, on the leader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ok, ApiError, Reply};
use crate::model::{now_ms, Command};
use crate::networks::{Network, DEFAULT};
use crate::node::Joined;
use crate::tls::random_hex;

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct CreateNetwork {
    pub name: String,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NetworkView {
    #[serde(flatten)]
    pub network: Network,
    /// Services on it.
    pub services: Vec<String>,
}

fn view(s: &crate::model::ClusterState, n: &Network) -> NetworkView {
    let on = |svc: &crate::services::Service| {
        if n.name == DEFAULT {
            svc.spec.networks.is_empty() || svc.spec.networks.iter().any(|a| a.target == DEFAULT)
        } else {
            svc.spec.networks.iter().any(|a| a.target == n.name)
        }
    };
    NetworkView {
        network: n.clone(),
        services: s
            .services
            .values()
            .filter(|svc| on(svc))
            .map(|svc| svc.spec.name.clone())
            .collect(),
    }
}

/// The cluster's default network, shown as Docker shows `ingress`.
fn default_network(s: &crate::model::ClusterState) -> Network {
    Network {
        id: DEFAULT.into(),
        name: DEFAULT.into(),
        driver: "overlay".into(),
        labels: BTreeMap::new(),
        internal: false,
        attachable: false,
        created_at: s.cluster.as_ref().map_or(0, |c| c.created_at),
    }
}

pub async fn create(j: &Joined, req: CreateNetwork) -> Reply {
    let n = Network {
        id: random_hex(12),
        name: req.name,
        driver: req.driver.unwrap_or_else(|| "overlay".into()),
        labels: req.labels,
        internal: req.internal,
        attachable: req.attachable,
        created_at: now_ms(),
    };
    let m = j.manager();
    m.sm.read(|a| a.state.network_fits(&n)).map_err(|e| {
        if e.contains("already exists") {
            ApiError::Conflict(e)
        } else {
            ApiError::BadRequest(e)
        }
    })?;
    let id = n.id.clone();
    m.write(Command::CreateNetwork(n)).await?;
    ok(&id)
}

pub async fn list(j: &Joined) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    let v: Vec<NetworkView> = m.sm.read(|a| {
        let s = &a.state;
        std::iter::once(default_network(s))
            .chain(s.networks.values().cloned())
            .map(|n| view(s, &n))
            .collect()
    });
    ok(&v)
}

pub async fn inspect(j: &Joined, name: &str) -> Reply {
    let m = j.manager();
    m.ensure_current().await?;
    m.sm.read(|a| {
        let s = &a.state;
        if name == DEFAULT {
            return ok(&view(s, &default_network(s)));
        }
        match s.find_network(name) {
            Ok(n) => ok(&view(s, n)),
            Err(e) => Err(ApiError::NotFound(e)),
        }
    })
}

pub async fn remove(j: &Joined, name: &str) -> Reply {
    if name == DEFAULT {
        return Err(ApiError::Forbidden(
            "the default network is the swarm's own: it cannot be removed".into(),
        ));
    }
    let m = j.manager();
    let (id, name) = m.sm.read(|a| {
        let n = a.state.find_network(name).map_err(ApiError::NotFound)?;
        if let Some(svc) = a.state.network_user(&n.name) {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by service {svc}",
                n.name
            )));
        }
        Ok((n.id.clone(), n.name.clone()))
    })?;
    m.write(Command::RemoveNetwork { id }).await?;
    ok(&name)
}
