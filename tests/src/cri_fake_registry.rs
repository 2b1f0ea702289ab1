//! A small OCI distribution registry for image-pull tests: serves images and image indexes from
//! memory on 127.0.0.1 with optional Basic or Bearer-token auth, counts blob downloads, and can
//! slow down or stall blob bodies (to overlap concurrent pulls, or to kill a puller mid-blob).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::image::{sha256, OciImage, MEDIA_MANIFEST};
use crate::{io_err, Result};

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const TOKEN: &str = "sk-fake-token";

/// Who may pull.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Basic {
        user: String,
        password: String,
    },
    /// `WWW-Authenticate: Bearer` pointing at this server's `/token`, which wants Basic creds.
    Bearer {
        user: String,
        password: String,
    },
}

#[derive(Default)]
struct Content {
    /// (repository, tag) -> manifest digest
    tags: HashMap<(String, String), String>,
    /// digest -> (media type, bytes), manifests and blobs alike
    objects: HashMap<String, (String, Vec<u8>)>,
}

pub struct FakeRegistry {
    pub addr: String,
    content: Arc<Mutex<Content>>,
    blob_gets: Arc<Mutex<HashMap<String, u64>>>,
    pub requests: Arc<AtomicU64>,
    /// Delay before each blob body.
    pub blob_delay_ms: Arc<AtomicU64>,
    /// When set, layer blob bodies stop after half (the connection stays open).
    pub stall_blobs: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

impl FakeRegistry {
    pub async fn start(auth: Auth) -> Result<FakeRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err("binding fake registry"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("fake registry addr"))?
            .to_string();
        let content = Arc::new(Mutex::new(Content::default()));
        let blob_gets = Arc::new(Mutex::new(HashMap::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let blob_delay_ms = Arc::new(AtomicU64::new(0));
        let stall_blobs = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            addr: addr.clone(),
            auth,
            content: content.clone(),
            blob_gets: blob_gets.clone(),
            requests: requests.clone(),
            blob_delay_ms: blob_delay_ms.clone(),
            stall_blobs: stall_blobs.clone(),
        };
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = shared.clone();
                tokio::spawn(async move {
                    let _ = s.serve(conn).await;
                });
            }
        });
        Ok(FakeRegistry {
            addr,
            content,
            blob_gets,
            requests,
            blob_delay_ms,
            stall_blobs,
            task,
        })
    }

    fn put(&self, media: &str, data: Vec<u8>) -> String {
        let d = sha256(&data);
        self.content
            .lock()
            .unwrap()
            .objects
            .insert(d.clone(), (media.to_string(), data));
        d
    }

    /// Serves `image` as `repo:tag`; returns the manifest digest.
    pub fn add(&self, repo: &str, tag: &str, image: &OciImage) -> String {
        for b in image.layers.iter().chain(std::iter::once(&image.config)) {
            self.put(&b.media_type, b.data.clone());
        }
        let d = self.put(MEDIA_MANIFEST, image.manifest.data.clone());
        self.content
            .lock()
            .unwrap()
            .tags
            .insert((repo.into(), tag.into()), d.clone());
        d
    }

    /// Serves an image index as `repo:tag` with one entry per (architecture, image).
    pub fn add_index(&self, repo: &str, tag: &str, entries: &[(&str, &OciImage)]) -> String {
        let mut manifests = Vec::new();
        for (arch, image) in entries {
            for b in image.layers.iter().chain(std::iter::once(&image.config)) {
                self.put(&b.media_type, b.data.clone());
            }
            let d = self.put(MEDIA_MANIFEST, image.manifest.data.clone());
            manifests.push(json!({
                "mediaType": MEDIA_MANIFEST, "digest": d, "size": image.manifest.data.len(),
                "platform": {"architecture": arch, "os": "linux"}
            }));
        }
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests});
        let d = self.put(MEDIA_INDEX, serde_json::to_vec(&index).unwrap());
        self.content
            .lock()
            .unwrap()
            .tags
            .insert((repo.into(), tag.into()), d.clone());
        d
    }

    /// How many times the blob `digest` was fetched with GET.
    pub fn blob_gets(&self, digest: &str) -> u64 {
        self.blob_gets
            .lock()
            .unwrap()
            .get(digest)
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Clone)]
struct Shared {
    addr: String,
    auth: Auth,
    content: Arc<Mutex<Content>>,
    blob_gets: Arc<Mutex<HashMap<String, u64>>>,
    requests: Arc<AtomicU64>,
    blob_delay_ms: Arc<AtomicU64>,
    stall_blobs: Arc<AtomicBool>,
}

async fn respond(
    conn: &mut TcpStream,
    code: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    conn.write_all(h.as_bytes()).await?;
    if !head_only {
        conn.write_all(body).await?;
    }
    conn.shutdown().await
}

impl Shared {
    async fn serve(self, mut conn: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&buf).to_string();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let authz = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let head_only = method == "HEAD";
        let path = target.split('?').next().unwrap_or("").to_string();

        if path == "/token" {
            let Auth::Bearer { user, password } = &self.auth else {
                return respond(&mut conn, "404 Not Found", &[], b"", false).await;
            };
            if authz != format!("Basic {}", b64(format!("{user}:{password}").as_bytes())) {
                return respond(
                    &mut conn,
                    "401 Unauthorized",
                    &[],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                    false,
                )
                .await;
            }
            let body =
                json!({"token": TOKEN, "access_token": TOKEN, "expires_in": 300}).to_string();
            return respond(
                &mut conn,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
                false,
            )
            .await;
        }
        let repo_of = |p: &str| -> String {
            let rest = p.trim_start_matches("/v2/");
            let cut = rest
                .rfind("/manifests/")
                .or_else(|| rest.rfind("/blobs/"))
                .unwrap_or(rest.len());
            rest[..cut].to_string()
        };
        let allowed = match &self.auth {
            Auth::None => true,
            Auth::Basic { user, password } => {
                authz == format!("Basic {}", b64(format!("{user}:{password}").as_bytes()))
            }
            Auth::Bearer { .. } => authz == format!("Bearer {TOKEN}"),
        };
        if !allowed {
            let challenge = match &self.auth {
                Auth::Bearer { .. } => format!(
                    "Bearer realm=\"http://{}/token\",service=\"skfake\",scope=\"repository:{}:pull\"",
                    self.addr,
                    repo_of(&path)
                ),
                _ => "Basic realm=\"skfake\"".to_string(),
            };
            return respond(
                &mut conn,
                "401 Unauthorized",
                &[
                    ("WWW-Authenticate", challenge),
                    ("Content-Type", "application/json".into()),
                ],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                head_only,
            )
            .await;
        }
        if path == "/v2/" || path == "/v2" {
            return respond(
                &mut conn,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                b"{}",
                head_only,
            )
            .await;
        }
        let repo = repo_of(&path);
        if let Some(reference) = path.rsplit_once("/manifests/").map(|(_, r)| r.to_string()) {
            let found = {
                let c = self.content.lock().unwrap();
                let digest = if reference.starts_with("sha256:") {
                    Some(reference.clone())
                } else {
                    c.tags.get(&(repo.clone(), reference.clone())).cloned()
                };
                digest.and_then(|d| c.objects.get(&d).map(|o| (d.clone(), o.clone())))
            };
            return match found {
                Some((d, (media, data))) => {
                    respond(
                        &mut conn,
                        "200 OK",
                        &[("Content-Type", media), ("Docker-Content-Digest", d)],
                        &data,
                        head_only,
                    )
                    .await
                }
                None => {
                    respond(
                        &mut conn,
                        "404 Not Found",
                        &[("Content-Type", "application/json".into())],
                        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                        head_only,
                    )
                    .await
                }
            };
        }
        if let Some(digest) = path.rsplit_once("/blobs/").map(|(_, d)| d.to_string()) {
            let obj = self.content.lock().unwrap().objects.get(&digest).cloned();
            let Some((media, data)) = obj else {
                return respond(
                    &mut conn,
                    "404 Not Found",
                    &[],
                    br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
                    head_only,
                )
                .await;
            };
            if !head_only {
                *self
                    .blob_gets
                    .lock()
                    .unwrap()
                    .entry(digest.clone())
                    .or_default() += 1;
            }
            let delay = self.blob_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\nConnection: close\r\n\r\n",
                data.len()
            );
            conn.write_all(head.as_bytes()).await?;
            if head_only {
                return conn.shutdown().await;
            }
            if self.stall_blobs.load(Ordering::SeqCst) && media.contains(".layer.") {
                conn.write_all(&data[..data.len() / 2]).await?;
                conn.flush().await?;
                // Hold the connection open until the client goes away.
                let mut sink = [0u8; 64];
                while conn.read(&mut sink).await.unwrap_or(0) > 0 {}
                return Ok(());
            }
            conn.write_all(&data).await?;
            return conn.shutdown().await;
        }
        respond(&mut conn, "404 Not Found", &[], b"", head_only).await
    }
}
