//! `docker network create|ls|inspect|rm` for swarm-scope overlay networks:
//! Apiary's networks as Docker's. Node-local networks (bridge, host) are
//! the node's own engine's, not served here.

use std::collections::BTreeMap;

use axum::extract::{Path, Query};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;

use super::spec_in::{err, object, rest, string, take, SpecError};
use super::{body_json, filters, json, refused, segment, Engine, Reply, SPEC_LIMIT};
use crate::api::networks::NetworkView;

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct DockerNetwork {
    name: String,
    id: String,
    created: String,
    scope: String,
    driver: String,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    ipam: Ipam,
    internal: bool,
    attachable: bool,
    ingress: bool,
    labels: BTreeMap<String, String>,
    options: BTreeMap<String, String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct Ipam {
    driver: String,
    config: Vec<BTreeMap<String, String>>,
}

fn view(n: &NetworkView) -> DockerNetwork {
    let n = &n.network;
    DockerNetwork {
        name: n.name.clone(),
        id: n.id.clone(),
        created: super::convert::time(n.created_at),
        scope: "swarm".into(),
        driver: n.driver.clone(),
        enable_ipv6: false,
        ipam: Ipam {
            driver: "default".into(),
            config: Vec::new(),
        },
        internal: n.internal,
        attachable: n.attachable,
        ingress: false,
        labels: n.labels.clone(),
        options: BTreeMap::new(),
    }
}

/// Docker's create body as Apiary's: an overlay network with labels,
/// `internal` and `attachable`; addressing and options are Apiary's own.
fn create_request(body: serde_json::Value) -> Result<serde_json::Value, SpecError> {
    let mut o = object(Some(body), "NetworkCreateRequest")?;
    let name = string(take(&mut o, "Name"), "Name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("Name", "a name is required"))?;
    match string(take(&mut o, "Driver"), "Driver")?.as_deref() {
        Some("overlay") => {}
        other => {
            return Err(err(
                "Driver",
                format!(
                    "{:?}: Apiary makes swarm-scope overlay networks only (`docker network create --driver overlay`)",
                    other.unwrap_or("bridge")
                ),
            ))
        }
    }
    match string(take(&mut o, "Scope"), "Scope")?.as_deref() {
        None | Some("") | Some("swarm") => {}
        Some(s) => {
            return Err(err(
                "Scope",
                format!("{s:?}: overlay networks are swarm-scope"),
            ))
        }
    }
    let mut ipam = object(take(&mut o, "IPAM"), "IPAM")?;
    match string(take(&mut ipam, "Driver"), "IPAM.Driver")?.as_deref() {
        None | Some("") | Some("default") => {}
        Some(d) => {
            return Err(err(
                "IPAM.Driver",
                format!("{d:?}: Apiary assigns addresses itself"),
            ))
        }
    }
    rest(&ipam, "IPAM")?;
    let labels: BTreeMap<String, String> = match take(&mut o, "Labels") {
        None => BTreeMap::new(),
        Some(v) => {
            serde_json::from_value(v).map_err(|_| err("Labels", "must map strings to strings"))?
        }
    };
    let flag = |o: &mut serde_json::Map<String, serde_json::Value>, k: &str| {
        take(o, k).and_then(|v| v.as_bool()).unwrap_or(false)
    };
    let internal = flag(&mut o, "Internal");
    let attachable = flag(&mut o, "Attachable");
    // Docker's own duplicate check; Apiary refuses a taken name anyway.
    take(&mut o, "CheckDuplicate");
    rest(&o, "NetworkCreateRequest")?;
    Ok(serde_json::json!({
        "name": name, "driver": "overlay", "labels": labels,
        "internal": internal, "attachable": attachable,
    }))
}

pub(super) fn routes() -> Router<Engine> {
    Router::new()
        .route("/networks", get(list))
        .route(
            "/networks/create",
            post(create).layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route("/networks/{id}", get(inspect).delete(remove))
}

async fn list(e: Engine, Query(q): Query<std::collections::HashMap<String, String>>) -> Reply {
    let f = filters(&q)?;
    let all: Vec<NetworkView> = e.call(Method::GET, "/v1/networks", None).await?;
    let keep = |n: &NetworkView| {
        f.iter().all(|(k, v)| match k.as_str() {
            "id" => n.network.id.starts_with(v.as_str()),
            "name" => n.network.name.contains(v.as_str()),
            "driver" => n.network.driver == *v,
            "scope" => v == "swarm",
            "type" => v == "custom",
            "label" => super::convert::label_matches(&n.network.labels, v),
            _ => false,
        })
    };
    json(&all.iter().filter(|n| keep(n)).map(view).collect::<Vec<_>>())
}

async fn create(e: Engine, body: Bytes) -> Reply {
    let req = create_request(body_json(&body, "network spec")?).map_err(refused("network spec"))?;
    let body = super::to_body(&req)?;
    let id: String = e.call(Method::POST, "/v1/networks", Some(body)).await?;
    #[derive(Serialize)]
    struct Created {
        #[serde(rename = "Id")]
        id: String,
        #[serde(rename = "Warning")]
        warning: String,
    }
    let created = Created {
        id,
        warning: String::new(),
    };
    Ok(crate::http::json_response(StatusCode::CREATED, &created).into_response())
}

async fn inspect(e: Engine, Path(id): Path<String>) -> Reply {
    let n: NetworkView = e
        .call(
            Method::GET,
            &format!("/v1/networks/{}", segment(&id)?),
            None,
        )
        .await?;
    json(&view(&n))
}

async fn remove(e: Engine, Path(id): Path<String>) -> Reply {
    let _: serde_json::Value = e
        .call(
            Method::DELETE,
            &format!("/v1/networks/{}", segment(&id)?),
            None,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
