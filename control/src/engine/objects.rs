//! `docker secret|config create|ls|inspect|rm`: Apiary's objects as Docker's
//! (a secret's data is never returned; a config's is, as Docker does).

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
use crate::api::objects::ObjectView;

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct DockerObject {
    #[serde(rename = "ID")]
    id: String,
    version: super::types::ObjectVersion,
    created_at: String,
    updated_at: String,
    spec: ObjectSpec,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct ObjectSpec {
    name: String,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

fn view(o: &ObjectView) -> DockerObject {
    DockerObject {
        id: o.id.clone(),
        // Changes with every change of it (its labels), as Docker's.
        version: super::types::ObjectVersion {
            index: o.updated_at,
        },
        created_at: super::convert::time(o.created_at),
        updated_at: super::convert::time(o.updated_at),
        spec: ObjectSpec {
            name: o.name.clone(),
            labels: o.labels.clone(),
            data: o.data.clone(),
        },
    }
}

/// Docker's create body: name, labels, data (base64); a driver or
/// templating is refused.
fn create_request(body: serde_json::Value) -> Result<serde_json::Value, SpecError> {
    let mut o = object(Some(body), "Spec")?;
    let name = string(take(&mut o, "Name"), "Name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("Name", "a name is required"))?;
    let labels: BTreeMap<String, String> = match take(&mut o, "Labels") {
        None => BTreeMap::new(),
        Some(v) => {
            serde_json::from_value(v).map_err(|_| err("Labels", "must map strings to strings"))?
        }
    };
    let data = string(take(&mut o, "Data"), "Data")?.unwrap_or_default();
    rest(&o, "Spec")?;
    Ok(serde_json::json!({ "name": name, "labels": labels, "data": data }))
}

/// The routes of one kind (`secrets` or `configs`).
pub(super) fn routes(kind: &'static str) -> Router<Engine> {
    Router::new()
        .route(
            &format!("/{kind}"),
            get(move |e: Engine, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                list(e, kind, q).await
            }),
        )
        .route(
            &format!("/{kind}/create"),
            post(move |e: Engine, body: Bytes| async move { create(e, kind, body).await })
                .layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
        .route(
            &format!("/{kind}/{{id}}"),
            get(move |e: Engine, Path(id): Path<String>| async move {
                inspect(e, kind, id).await
            })
            .delete(move |e: Engine, Path(id): Path<String>| async move {
                remove(e, kind, id).await
            }),
        )
        .route(
            &format!("/{kind}/{{id}}/update"),
            post(
                move |e: Engine,
                      Path(id): Path<String>,
                      Query(q): Query<std::collections::HashMap<String, String>>,
                      body: Bytes| async move { update(e, kind, id, q, body).await },
            )
            .layer(axum::extract::DefaultBodyLimit::max(SPEC_LIMIT)),
        )
}

/// `POST /secrets|configs/{id}/update?version=`: Docker lets only the
/// labels change; the name must stay, and data may only be what a config
/// already holds (a secret's is never sent back, so none may come).
async fn update(
    e: Engine,
    kind: &str,
    id: String,
    q: std::collections::HashMap<String, String>,
    body: Bytes,
) -> Reply {
    let what = format!("{} spec", kind.trim_end_matches('s'));
    let o: ObjectView = e
        .call(Method::GET, &format!("/v1/{kind}/{}", segment(&id)?), None)
        .await?;
    super::check_version(
        kind.trim_end_matches('s'),
        &o.name,
        o.updated_at,
        q.get("version"),
    )?;
    let mut spec = object(Some(body_json(&body, &what)?), "Spec").map_err(refused(&what))?;
    let fixed = |path: &str, why: &str| refused(&what)(err(path, why));
    if string(take(&mut spec, "Name"), "Name")
        .map_err(refused(&what))?
        .is_some_and(|n| n != o.name)
    {
        return Err(fixed("Name", "a secret or config cannot be renamed"));
    }
    if let Some(data) = string(take(&mut spec, "Data"), "Data").map_err(refused(&what))? {
        if o.data.as_deref() != Some(data.as_str()) {
            return Err(fixed(
                "Data",
                "only the labels can change: new data is a new secret or config",
            ));
        }
    }
    let labels: BTreeMap<String, String> = match take(&mut spec, "Labels") {
        None => BTreeMap::new(),
        Some(v) => {
            serde_json::from_value(v).map_err(|_| fixed("Labels", "must map strings to strings"))?
        }
    };
    rest(&spec, "Spec").map_err(refused(&what))?;
    let body =
        super::to_body(&serde_json::json!({ "labels": labels, "updated_at": o.updated_at }))?;
    let _: ObjectView = e
        .call(
            Method::POST,
            &format!("/v1/{kind}/{}/labels", o.id),
            Some(body),
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn list(e: Engine, kind: &str, q: std::collections::HashMap<String, String>) -> Reply {
    let f = filters(&q)?;
    let all: Vec<ObjectView> = e.call(Method::GET, &format!("/v1/{kind}"), None).await?;
    let keep = |o: &ObjectView| {
        f.iter().all(|(k, v)| match k.as_str() {
            "id" => o.id.starts_with(v.as_str()),
            "name" => o.name.starts_with(v.as_str()),
            "label" => super::convert::label_matches(&o.labels, v),
            _ => false,
        })
    };
    json(&all.iter().filter(|o| keep(o)).map(view).collect::<Vec<_>>())
}

async fn create(e: Engine, kind: &str, body: Bytes) -> Reply {
    let what = format!("{} spec", kind.trim_end_matches('s'));
    let req = create_request(body_json(&body, &what)?).map_err(refused(&what))?;
    let body = super::to_body(&req)?;
    let id: String = e
        .call(Method::POST, &format!("/v1/{kind}"), Some(body))
        .await?;
    super::created(id)
}

async fn inspect(e: Engine, kind: &str, id: String) -> Reply {
    let o: ObjectView = e
        .call(Method::GET, &format!("/v1/{kind}/{}", segment(&id)?), None)
        .await?;
    json(&view(&o))
}

async fn remove(e: Engine, kind: &str, id: String) -> Reply {
    let _: serde_json::Value = e
        .call(
            Method::DELETE,
            &format!("/v1/{kind}/{}", segment(&id)?),
            None,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
