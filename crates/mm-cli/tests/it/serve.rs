//! `mm serve`: the real binary on a real port, spoken to over real sockets (a few lines of
//! HTTP/1.1 by hand, so that malformed, slow and vanishing clients can be played too).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::runs::{json, ok, workspace};

/// A response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{} not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn read_reply(stream: TcpStream) -> Reply {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut body = Vec::new();
    r.read_to_end(&mut body).expect("body");
    Reply { status, headers, body }
}

/// One request on a connection of its own (`Connection: close`).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    // A server may answer before the whole body is in (413) and close: the answer still counts.
    let _ = s.write_all(body);
    read_reply(s)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A running `mm serve`, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, args: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mm"))
        .current_dir(dir)
        .args(["serve", "--port", "0", "--device", "cpu"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start mm serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("mm serve says where it listens");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let served = Served { child, addr, log: rx };
    let started = Instant::now();
    while get(served.addr, "/ready").status != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    served
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `/v1/retrieve` finds what `mm retrieve` finds, `/v1/embed` gives unit vectors, the items
/// found are served, and a retrieval model refuses to predict.
fn searches_as_mm_retrieve(ws: &Path, addr: SocketAddr, run: &str) {
    let query = "a big red dot";
    let expected = json(&ok(
        ws,
        &["retrieve", "--run", run, "--query", query, "--top-k", "4", "--json", "--device", "cpu"],
    ));
    let reply = post_json(
        addr,
        "/v1/retrieve?top_k=4",
        &json!({"model": "serve-retrieval", "text": query}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let got = reply.json();
    let ids = |v: &Value| -> Vec<Value> {
        v["results"].as_array().expect("results").iter().map(|r| r["id"].clone()).collect()
    };
    assert_eq!(ids(&got), ids(&expected), "{got} vs {expected}");
    for (a, b) in
        got["results"].as_array().expect("r").iter().zip(expected["results"].as_array().expect("r"))
    {
        assert!(
            (a["score"].as_f64().expect("s") - b["score"].as_f64().expect("s")).abs() < 1e-4,
            "{a} vs {b}"
        );
    }
    let first = got["results"][0]["id"].as_str().expect("id");
    let item = get(addr, &format!("/v1/gallery/serve-retrieval/{first}"));
    assert_eq!((item.status, item.header("content-type")), (200, Some("image/png")));
    assert!(item.body.starts_with(b"\x89PNG"));
    assert_eq!(get(addr, "/v1/gallery/serve-retrieval/..%2F..%2Frun.toml").status, 404);
    // An item of the manifest outside the gallery (the test split) is not served either.
    let manifest =
        std::fs::read_to_string(ws.join("data/synth/retrieval.jsonl")).expect("manifest");
    let train =
        manifest.lines().map(json).find(|s| s["split"] == "train").expect("a training item");
    let path = format!("/v1/gallery/serve-retrieval/{}", train["id"].as_str().expect("id"));
    assert_eq!(get(addr, &path).status, 404);
    let e =
        post_json(addr, "/v1/embed", &json!({"model": "serve-retrieval", "text": query})).json();
    let v: Vec<f64> = e["embeddings"]["text"]
        .as_array()
        .expect("vector")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(!v.is_empty() && (norm - 1.0).abs() < 1e-3, "{e}");
    let reply = post_json(addr, "/v1/predict", &json!({"model": "serve-retrieval", "text": query}));
    assert_eq!(reply.status, 422, "{}", reply.text());
    let reply = post_json(addr, "/v1/retrieve", &json!({"model": "serve-retrieval"}));
    assert_eq!(reply.status, 422, "{}", reply.text());
}

/// A headless browser: MM_CHROMIUM, or Chromium or Chrome on PATH.
fn chromium() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("MM_CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// The web page in a real browser: it lists the models, fills in the text from its link,
/// submits the form, and shows the prediction the API gives for that text. A screenshot is
/// kept in the test output (`target/tmp/serve-page.png`).
fn browser_predicts(addr: SocketAddr, expected: &str, text: &str) {
    let Some(browser) = chromium() else {
        // .ci/run installs Chromium from Debian's registry; elsewhere it may be missing.
        assert!(std::env::var_os("CI").is_none(), "CI has no Chromium: .ci/run should install it");
        eprintln!("no Chromium here (apt-get install chromium, or MM_CHROMIUM=PATH): the browser check is skipped");
        return;
    };
    let query: String =
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
    let url = format!("http://{addr}/?model=digits&text={query}&submit=1");
    let profile = std::env::temp_dir().join(format!("mm-serve-chromium-{}", std::process::id()));
    let run = |extra: &[&str]| {
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=15000",
                "--window-size=900,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("run the browser")
    };
    let out = run(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<section id=\"result\" class=\"\">"), "the result is not shown: {dom}");
    assert!(
        dom.contains(&format!("<span id=\"prediction\">{expected}</span>")),
        "expected {expected}: {dom}"
    );
    assert!(dom.contains("<div id=\"error\" role=\"alert\"></div>"), "{dom}");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = run(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!("no screenshot ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    eprintln!("the web page, as the browser showed it: {}", shot.display());
    let _ = std::fs::remove_dir_all(&profile);
}

/// `mm serve` answers every endpoint with what `mm predict` says, batches concurrent
/// requests, refuses what it cannot take with the right status and a JSON error, keeps
/// serving through bad clients, and finishes the requests in flight when stopped.
#[test]
fn serve_answers_batches_and_survives_bad_clients() {
    let ws = workspace(240);
    let config = super::runs::configs().join("synthetic/synthetic.toml");
    let run = "runs/serve";
    let _ = std::fs::remove_dir_all(ws.join(run));
    ok(
        ws,
        &[
            "train",
            "--config",
            config.to_str().expect("utf-8"),
            "--set",
            "train.epochs=1",
            "--out",
            run,
            "--device",
            "cpu",
            "--quiet",
        ],
    );
    let predicted: Vec<Value> = ok(ws, &["predict", "--run", run]).lines().map(json).collect();
    let manifest: Vec<Value> = std::fs::read_to_string(ws.join("data/synth/manifest.jsonl"))
        .expect("manifest")
        .lines()
        .map(json)
        .collect();
    let sample = |id: &str| manifest.iter().find(|s| s["id"] == id).expect("sample").clone();
    let file = |rel: &Value| {
        std::fs::read(ws.join("data/synth").join(rel.as_str().expect("path"))).expect("file")
    };

    let retrieval = "runs/serve-retrieval";
    let _ = std::fs::remove_dir_all(ws.join(retrieval));
    let rconfig = super::runs::configs().join("retrieval/retrieval.toml");
    let rconfig = rconfig.to_str().expect("utf-8");
    let train = ["train", "--config", rconfig, "--set", "train.epochs=1", "--out", retrieval];
    ok(ws, &[&train[..], &["--device", "cpu", "--quiet"]].concat());
    let digits = format!("digits={run}");
    let server = serve(
        ws,
        &[
            "--run",
            &digits,
            "--run",
            retrieval,
            "--max-batch",
            "16",
            "--max-wait-ms",
            "20",
            "--read-timeout-s",
            "2",
        ],
    );
    let addr = server.addr;
    assert_eq!(get(addr, "/health").json()["status"], "ok");
    let models = get(addr, "/v1/models").json();
    assert_eq!(models["models"][0]["name"], "digits", "{models}");
    assert_eq!(models["models"][0]["modalities"], json!(["image", "audio", "text"]), "{models}");
    let api = get(addr, "/openapi.json").json();
    assert_eq!(api["openapi"], "3.1.0");
    assert!(api["paths"]["/v1/predict"]["post"]["responses"]["503"].is_object(), "{api}");
    let page = get(addr, "/");
    assert!(page.text().contains("<title>mm serve</title>"), "{}", page.text());

    // The same answer as `mm predict`, for every sample of the test split, sent as JSON.
    let to_json = |s: &Value| {
        json!({"id": s["id"], "text": s["text"],
               "image": base64(&file(&s["image"])), "audio": base64(&file(&s["audio"]))})
    };
    let mut compared = 0;
    for p in predicted.iter().take(12) {
        let id = p["id"].as_str().expect("id");
        let reply = post_json(addr, "/v1/predict?model=digits", &to_json(&sample(id)));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let got = reply.json();
        assert_eq!(got["prediction"], p["prediction"], "{id}: {got} vs {p}");
        for (class, v) in p["probabilities"].as_object().expect("probabilities") {
            let served = got["probabilities"][class].as_f64().expect("probability");
            assert!((served - v.as_f64().expect("p")).abs() < 1e-4, "{id} {class}: {got} vs {p}");
        }
        compared += 1;
    }
    assert_eq!(compared, 12);

    // Several samples in one request; a modality missing; multipart form data.
    let ids: Vec<&str> = predicted.iter().take(3).map(|p| p["id"].as_str().expect("id")).collect();
    let list: Vec<Value> = ids.iter().map(|id| to_json(&sample(id))).collect();
    let reply =
        post_json(addr, "/v1/predict?model=digits", &json!({"model": "digits", "samples": list}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let rows = reply.json()["predictions"].as_array().expect("list").clone();
    assert_eq!(
        rows.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
        json!(ids).as_array().expect("ids").clone()
    );
    let s = sample(ids[0]);
    let text_only = post_json(addr, "/v1/predict?model=digits", &json!({"text": s["text"]})).json();
    let sum: f64 =
        text_only["probabilities"].as_object().expect("p").values().filter_map(Value::as_f64).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{text_only}");
    let boundary = "mmBoundary7";
    let mut form = Vec::new();
    form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    form.extend(file(&s["image"]));
    form.extend(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n{}\r\n--{boundary}--\r\n", s["text"].as_str().expect("text")).as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let reply = request(addr, "POST", "/v1/predict?model=digits", &[("Content-Type", &ct)], &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.json()["probabilities"].is_object());
    // A form over axum's own 2 MiB default, under --max-body-mib: 3 MiB of text.
    let mut big = Vec::new();
    big.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n").as_bytes(),
    );
    big.extend("a red dot ".repeat(300_000).as_bytes());
    big.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let reply = request(addr, "POST", "/v1/predict?model=digits", &[("Content-Type", &ct)], &big);
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Concurrent requests are batched: fewer forward passes than requests.
    let before = get(addr, "/metrics").text();
    let passes_before = metric(&before, "mm_batch_size_count{model=\"digits\"}");
    let bodies: Vec<Value> = predicted
        .iter()
        .take(32)
        .map(|p| to_json(&sample(p["id"].as_str().expect("id"))))
        .collect();
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|b| std::thread::spawn(move || post_json(addr, "/v1/predict?model=digits", &b).status))
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().expect("client")).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let after = get(addr, "/metrics").text();
    let passes = metric(&after, "mm_batch_size_count{model=\"digits\"}") - passes_before;
    let samples = metric(&after, "mm_batch_size_sum{model=\"digits\"}")
        - metric(&before, "mm_batch_size_sum{model=\"digits\"}");
    assert_eq!(samples, 32.0, "{after}");
    assert!(passes < 32.0, "32 concurrent requests took {passes} forward passes: {after}");
    assert!(
        after.contains("mm_request_duration_seconds_bucket{endpoint=\"/v1/predict\",le=\"+Inf\"}"),
        "{after}"
    );
    assert!(after.contains("mm_queue_depth{model=\"digits\"} 0"), "{after}");

    searches_as_mm_retrieve(ws, addr, retrieval);
    browser_predicts(
        addr,
        text_only["prediction"].as_str().expect("class"),
        s["text"].as_str().expect("text"),
    );

    // Bad requests: the right status and a JSON error each.
    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            request(
                addr,
                "POST",
                "/v1/predict?model=digits",
                &[("Content-Type", "application/json")],
                b"{\"text\": ",
            ),
            400,
            "not JSON",
        ),
        (
            post_json(addr, "/v1/predict?model=digits", &json!({"video": "x.mp4"})),
            422,
            "unknown field `video`",
        ),
        (
            post_json(addr, "/v1/predict?model=digits", &json!({"features": [1.0, 2.0]})),
            422,
            "does not read features",
        ),
        (post_json(addr, "/v1/predict?model=digits", &json!({})), 422, "no input"),
        (
            post_json(
                addr,
                "/v1/predict?model=digits",
                &json!({"image": base64(b"not a PNG at all")}),
            ),
            422,
            "request/image",
        ),
        (
            post_json(addr, "/v1/predict?model=digits", &json!({"audio": "@@@"})),
            400,
            "audio: not base64",
        ),
        (
            post_json(addr, "/v1/predict", &json!({"model": "other", "text": "x"})),
            404,
            "no model named",
        ),
        (
            request(
                addr,
                "POST",
                "/v1/predict?model=digits",
                &[("Content-Type", "text/plain")],
                b"hello",
            ),
            415,
            "content type",
        ),
        (get(addr, "/v1/nothing"), 404, "no such endpoint"),
        (
            request(
                addr,
                "POST",
                "/v1/predict?model=digits",
                &[("Content-Type", "application/json")],
                &vec![b' '; 17 << 20],
            ),
            413,
            "over the limit",
        ),
    ];
    for (reply, status, says) in cases {
        assert_eq!(reply.status, status, "{}", reply.text());
        let e = reply.json();
        assert!(e["error"].as_str().is_some_and(|m| m.contains(says)), "{says}: {e}");
    }

    // Bad clients: one that stops sending mid-body, one that vanishes, a thousand connections.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"te").expect("send");
    let started = Instant::now();
    let reply = read_reply(slow);
    assert_eq!(reply.status, 408, "{}", reply.text());
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    // A head that never ends (slowloris): the connection is closed after the read timeout.
    let mut head = TcpStream::connect(addr).expect("connect");
    head.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("send");
    head.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let started = Instant::now();
    let reply = read_reply(head);
    let waited = started.elapsed();
    assert!(waited > Duration::from_millis(1500) && waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(reply.status, 408, "{}", reply.text());
    assert!(reply.json()["error"].as_str().is_some_and(|e| e.contains("head did not arrive")));
    let mut gone = TcpStream::connect(addr).expect("connect");
    gone.write_all(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"text\"",
    )
    .expect("send");
    drop(gone);
    // This process holds a thousand sockets too: its soft limit may be 1024.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid resource and a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let rss_before = rss_kib(server.child.id());
    // A thousand connections at once, every one with a request in: each is answered, half of
    // them with a JSON error (an unknown model), and the server goes on serving.
    let mut open: Vec<TcpStream> =
        (0..1000).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    for (i, s) in open.iter_mut().enumerate() {
        let body = if i % 2 == 0 {
            "{\"text\": \"a dot\"}"
        } else {
            "{\"model\": \"x\", \"text\": \"a\"}"
        };
        let head = format!("POST /v1/predict?model=digits HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(head.as_bytes()).expect("send");
    }
    let mut predicted = 0;
    for (i, s) in open.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let r = read_reply(s);
        if i % 2 == 0 {
            // A prediction, or a refusal when the queue (256 requests) is full.
            assert!(
                r.status == 200 || (r.status == 503 && r.header("retry-after") == Some("1")),
                "connection {i}: {} {}",
                r.status,
                r.text()
            );
            predicted += usize::from(r.status == 200);
        } else {
            assert_eq!(r.status, 404, "connection {i}: {}", r.text());
            assert!(r.json()["error"].is_string());
        }
    }
    assert!(predicted >= 100, "only {predicted} of 500 predictions among 1000 connections");
    let reply = post_json(addr, "/v1/predict?model=digits", &json!({"text": "a dot"}));
    assert_eq!(reply.status, 200, "after 1000 connections: {}", reply.text());
    let rss_after = rss_kib(server.child.id());
    assert!(
        rss_after < rss_before + 200 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(get(addr, "/health").status, 200);
    drop(server);

    // A slow model behind a short queue and a token: 503 with Retry-After when full, 504 past
    // the time limit, 401 without the token, and on SIGTERM the request in flight is answered.
    let mut slow = serve(
        ws,
        &[
            "--run",
            run,
            "--queue",
            "2",
            "--max-batch",
            "1",
            "--simulate-latency-ms",
            "400",
            "--timeout-s",
            "1",
            "--max-audio-s",
            "0.1",
            "--token",
            "s3cret",
        ],
    );
    let addr = slow.addr;
    let auth = [("Authorization", "Bearer s3cret"), ("Content-Type", "application/json")];
    let reply = post_json(addr, "/v1/predict", &json!({"text": "a dot"}));
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(
        request(addr, "POST", "/v1/predict", &[("Authorization", "Bearer s3creT")], b"{}").status,
        401
    );
    assert_eq!(get(addr, "/metrics").status, 401);
    assert_eq!(get(addr, "/health").status, 200, "probes need no token");
    // "bearer" in any case; a sound longer than --max-audio-s is refused before the model.
    let wav = std::fs::read(ws.join("data/synth/audio/s0000.wav")).expect("wav");
    let body = json!({"audio": base64(&wav)}).to_string();
    let lower = [("Authorization", "bearer s3cret"), ("Content-Type", "application/json")];
    let reply = request(addr, "POST", "/v1/predict", &lower, body.as_bytes());
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.text().contains("--max-audio-s"), "{}", reply.text());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let r = request(addr, "POST", "/v1/predict", &auth, b"{\"text\": \"a dot\"}");
                (r.status, r.header("retry-after").map(str::to_string))
            })
        })
        .collect();
    let replies: Vec<(u16, Option<String>)> =
        threads.into_iter().map(|t| t.join().expect("client")).collect();
    assert!(replies.iter().any(|r| r.0 == 200), "{replies:?}");
    assert!(replies.iter().all(|r| matches!(r.0, 200 | 503 | 504)), "{replies:?}");
    assert!(replies.iter().any(|r| r.0 == 503 && r.1.as_deref() == Some("1")), "{replies:?}");
    let in_flight = std::thread::spawn(move || {
        request(addr, "POST", "/v1/predict", &auth, b"{\"text\": \"a hoop\"}")
    });
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(slow.child.id() as i32, libc::SIGTERM);
    }
    let reply = in_flight.join().expect("client");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = slow.child.wait().expect("exit");
    assert!(status.success(), "{status:?}");
    let log: Vec<String> = slow.log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("stopped; every request in flight was answered")),
        "{log:?}"
    );

    // A folder that is not a run: one message, before anything listens.
    let out = Command::new(env!("CARGO_BIN_EXE_mm"))
        .current_dir(ws)
        .args(["serve", "--run", "data", "--port", "0"])
        .output()
        .expect("run mm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a run folder") && !err.contains("listening"), "{err}");
}

/// `/v1/transcribe` of a speech recognition run says what `mm transcribe` says (`expected`, its
/// JSON for `wav` with beam 8), and refuses a WAV file without samples.
pub(super) fn transcribes_as_mm_transcribe(dir: &Path, run: &str, wav: &str, expected: &Value) {
    let server = serve(dir, &["--run", run]);
    let audio = std::fs::read(dir.join(wav)).expect("wav");
    let reply = post_json(server.addr, "/v1/transcribe?beam=8", &json!({"audio": base64(&audio)}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let got = reply.json();
    assert_eq!(got["text"], expected["text"], "{got} vs {expected}");
    assert_eq!(got["decoder"], "beam 8");
    assert_eq!(got["words"].as_array().map(Vec::len), expected["words"].as_array().map(Vec::len));
    let empty = std::fs::read(dir.join("empty.wav")).expect("empty wav");
    let reply = post_json(server.addr, "/v1/transcribe", &json!({"audio": base64(&empty)}));
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(
        reply.json()["error"].as_str().is_some_and(|e| e.contains("0 samples")),
        "{}",
        reply.text()
    );
    let reply = post_json(server.addr, "/v1/predict", &json!({"audio": base64(&audio)}));
    assert_eq!(reply.status, 422, "{}", reply.text());
}
