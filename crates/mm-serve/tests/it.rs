//! Integration tests of mm-serve as a library: what is refused before anything is served. The
//! server itself, on trained runs over real sockets, is tested through `mm serve` (mm-cli's
//! `serve_answers_batches_and_survives_bad_clients`).

use mm_serve::{Error, ModelSpec, ServeConfig, Server};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

#[test]
fn model_names_come_from_the_folder_or_are_given() {
    let m = ModelSpec::parse("runs/av-digits").expect("a folder");
    assert_eq!((m.name.as_str(), m.run.to_str()), ("av-digits", Some("runs/av-digits")));
    let m = ModelSpec::parse("digits=runs/x").expect("named");
    assert_eq!((m.name.as_str(), m.run.to_str()), ("digits", Some("runs/x")));
    for bad in ["a b=runs/x", "=runs/x", "/"] {
        let e = ModelSpec::parse(bad).expect_err(bad).to_string();
        assert!(e.contains("NAME=DIR"), "{bad}: {e}");
    }
}

#[test]
fn a_taken_port_no_model_and_a_folder_that_is_not_a_run_are_errors() {
    runtime().block_on(async {
        let first =
            Server::bind(ServeConfig { port: 0, ..ServeConfig::default() }).await.expect("bind");
        let port = first.local_addr().port();
        let taken = Server::bind(ServeConfig { port, ..ServeConfig::default() }).await;
        assert!(
            matches!(&taken, Err(Error::Bind { addr, .. }) if addr.ends_with(&port.to_string())),
            "{taken:?}"
        );
        let e = first.run(Vec::new(), tch::Device::Cpu, async {}).await.expect_err("no model");
        assert!(e.to_string().contains("no model to serve"), "{e}");

        let dir = std::env::temp_dir().join(format!("mm-serve-not-a-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let server =
            Server::bind(ServeConfig { port: 0, ..ServeConfig::default() }).await.expect("bind");
        let twice = vec![ModelSpec::new("a", &dir), ModelSpec::new("a", &dir)];
        let e =
            server.run(twice, tch::Device::Cpu, std::future::pending()).await.expect_err("twice");
        assert!(e.to_string().contains("two models are named \"a\""), "{e}");
        // The server stops by itself when a model cannot be loaded, with the run's own error.
        let server =
            Server::bind(ServeConfig { port: 0, ..ServeConfig::default() }).await.expect("bind");
        let e = server
            .run(vec![ModelSpec::new("a", &dir)], tch::Device::Cpu, std::future::pending())
            .await
            .expect_err("not a run");
        assert!(matches!(&e, Error::Run { path, .. } if *path == dir), "{e:?}");
        assert!(e.to_string().contains("run.toml"), "{e}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    });
}
