//! Proxies to the kubelet: `pods/log` (exec, attach and port-forward come with the kubelet
//! issue).

use crate::handlers::{decode_as, Ctx, Target};
use crate::server::Body;
use crate::status::StatusError;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;

/// `pods/log`: proxies to the kubelet of the pod's node, like upstream.
pub async fn pod_log(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    let pods = &t.res;
    let pod = match ctx.store.get(&t.key()).await {
        Ok(Some(kv)) => decode_as(pods, &kv)?,
        Ok(None) => return Err(StatusError::not_found("", "pods", t.name())),
        Err(e) => return Err(StatusError::internal(e.to_string())),
    };
    let names: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match t.param("container") {
        Some(c) if !c.is_empty() => c.to_string(),
        _ if names.len() == 1 => names[0].clone(),
        _ => {
            return Err(StatusError::bad_request(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                t.name(),
                names.join(" ")
            )))
        }
    };
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(StatusError::bad_request(format!(
            "pod {} is not scheduled to a node yet; there are no logs",
            t.name()
        )));
    }
    let nodes = ctx.registry.by_kind("", "Node").expect("nodes registered");
    let node = match ctx.store.get(&nodes.key(None, node_name)).await {
        Ok(Some(kv)) => decode_as(&nodes, &kv)?,
        _ => return Err(StatusError::not_found("", "nodes", node_name)),
    };
    let ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(10250);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    let mut url = url::Url::parse(&format!(
        "https://{host}:{port}/containerLogs/{}/{}/{container}",
        t.namespace.as_deref().unwrap_or("default"),
        t.name()
    ))
    .map_err(|e| StatusError::internal(e.to_string()))?;
    for (k, v) in &t.query {
        if [
            "follow",
            "previous",
            "timestamps",
            "tailLines",
            "sinceSeconds",
            "sinceTime",
            "limitBytes",
        ]
        .contains(&k.as_str())
        {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    let resp = ctx.kubelet.get(url.clone()).send().await.map_err(|e| {
        StatusError::internal(format!(
            "cannot reach the kubelet on node {node_name} at {url}: {e}"
        ))
    })?;
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_string();
    if code >= 400 {
        let text = resp.text().await.unwrap_or_default();
        return Err(StatusError::new(
            code,
            "BadRequest",
            text.trim().to_string(),
        ));
    }
    let stream = resp
        .bytes_stream()
        .map(|r| r.map(Frame::data).map_err(std::io::Error::other));
    Ok(Response::builder()
        .status(200)
        .header("content-type", ct)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}
