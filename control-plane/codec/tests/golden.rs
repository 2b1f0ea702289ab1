//! Protobuf bodies recorded from `kubectl create …` (kubectl 1.32) against a recording listener,
//! next to `kubectl create … --dry-run=client -o json` for the same command: the JSON upstream's
//! own serializer writes for the very same object.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

const FIXTURES: &[&str] = &[
    "namespace",
    "configmap",
    "secret",
    "deployment",
    "service",
    "resourcequota",
    "poddisruptionbudget",
    "ingress",
    "cronjob",
    "priorityclass",
];

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn json_fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap()
}

#[test]
fn kubectl_bodies_decode_to_upstream_json() {
    for name in FIXTURES {
        let got = skiff_codec::decode(&fixture(&format!("{name}.pb"))).unwrap();
        assert_eq!(got, json_fixture(name), "{name}");
    }
}

#[test]
fn upstream_json_round_trips() {
    for name in FIXTURES {
        let want = json_fixture(name);
        let bytes = skiff_codec::encode_strict(&want).unwrap();
        assert_eq!(skiff_codec::decode(&bytes).unwrap(), want, "{name}");
    }
}

#[test]
fn namespace_encoding_matches_kubectl() {
    let got = skiff_codec::encode(&json_fixture("namespace")).unwrap();
    let want = fixture("namespace.pb");
    // Go also writes the empty non-pointer strings of ObjectMeta; decode both and compare.
    assert_eq!(
        skiff_codec::decode(&got).unwrap(),
        skiff_codec::decode(&want).unwrap()
    );
    assert!(got.starts_with(b"k8s\0"));
    assert!(
        got.ends_with(&[0x1a, 0x00, 0x22, 0x00]),
        "empty contentEncoding/contentType"
    );
}

/// Serves `kubectl` on `listener` until its POST: records the body, answers 201 with `reply`.
/// Gives up (killing kubectl) if kubectl exits without posting or after 60 seconds.
fn serve_once(
    listener: &TcpListener,
    kubectl: &mut Child,
    reply: impl Fn(&[u8]) -> Vec<u8>,
) -> (String, Vec<u8>) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = kubectl.try_wait().unwrap() {
                    panic!("kubectl exited ({status}) without sending its object");
                }
                if Instant::now() > deadline {
                    let _ = kubectl.kill();
                    panic!("kubectl sent nothing within 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => panic!("accept: {e}"),
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut len = 0usize;
        let mut content_type = String::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((&h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "content-type" => content_type = v.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        if !request_line.starts_with("POST") {
            // kubectl's version probe and the like.
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            continue;
        }
        let out = reply(&body);
        let head = format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/vnd.kubernetes.protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            out.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&out).unwrap();
        return (content_type, body);
    }
}

/// Live check against the kubectl on PATH (fails when there is none): kubectl's protobuf body
/// decodes to the upstream JSON, and kubectl accepts our protobuf answer.
#[test]
fn live_kubectl_create() {
    assert!(
        Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .is_ok(),
        "kubectl is not on PATH: this test needs the installed kubectl 1.32"
    );
    let cases: &[(&str, &[&str])] = &[
        ("namespace", &["create", "namespace", "sk-x"]),
        (
            "configmap",
            &["create", "configmap", "sk-c", "--from-literal=a=b"],
        ),
        (
            "deployment",
            &[
                "create",
                "deployment",
                "sk-d",
                "--image=nginx",
                "--replicas=2",
                "--port=80",
            ],
        ),
    ];
    for (name, args) in cases {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        let mut child = Command::new("kubectl")
            .arg("--server")
            .arg(&server)
            .args(*args)
            .arg("-o")
            .arg("json")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (content_type, body) = serve_once(&listener, &mut child, |body| {
            // Answer as a server would: the created object, with server-set fields.
            let mut obj = skiff_codec::decode(body).unwrap();
            obj["metadata"]["uid"] = "6f1c1b7e-0000-4000-8000-000000000001".into();
            obj["metadata"]["creationTimestamp"] = "2026-01-02T03:04:05Z".into();
            obj["metadata"]["resourceVersion"] = "42".into();
            skiff_codec::encode(&obj).unwrap()
        });
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(content_type, skiff_codec::CONTENT_TYPE);
        assert_eq!(
            skiff_codec::decode(&body).unwrap(),
            json_fixture(name),
            "{name}"
        );
        // kubectl decoded our protobuf answer and printed it as JSON.
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut want = json_fixture(name);
        want["metadata"]["uid"] = "6f1c1b7e-0000-4000-8000-000000000001".into();
        want["metadata"]["creationTimestamp"] = "2026-01-02T03:04:05Z".into();
        want["metadata"]["resourceVersion"] = "42".into();
        assert_eq!(printed, want, "{name}");
    }
}
