//! SIGHUP reloads the `--config` file into the running binary: pool-config changes apply,
//! changed endpoints replace (and drain) the server, new servers are added, and an invalid
//! file changes nothing and is logged with the reason. Observed through the REST API.

mod common;

use common::Process;
use serde_json::Value;

fn file(alpha_url: &str, alpha_pool: &str, beta: bool) -> String {
    let mut toml = format!(
        "[[servers]]\nid = \"alpha\"\nendpoints = [{{ url = \"{alpha_url}\", transport = \"streamable_http\" }}]\npool = {alpha_pool}\n"
    );
    if beta {
        toml.push_str(
            "\n[[servers]]\nid = \"beta\"\nendpoints = [{ url = \"http://127.0.0.1:9/mcp\", transport = \"sse\" }]\n",
        );
    }
    toml
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = http.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_changed_file_and_refuses_an_invalid_one() {
    let dir = std::env::temp_dir().join(format!("mcp-pool-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let (url_a, url_b) = ("http://127.0.0.1:7/a/mcp", "http://127.0.0.1:7/b/mcp");
    std::fs::write(
        &path,
        file(url_a, "{ enabled = true, max_size = 10 }", false),
    )
    .unwrap();
    let mut gw = Process::start(
        &["--config", path.to_str().unwrap()],
        &[("AUTH_REQUIRED", "false")],
        &dir,
    )
    .await;
    let http = reqwest::Client::new();
    let (base, server, config) = (
        gw.base.clone(),
        |b: &str, id: &str| format!("{b}/servers/{id}"),
        |b: &str, id: &str| format!("{b}/servers/{id}/pool/config"),
    );
    let (_, alpha) = get(&http, server(&base, "alpha")).await;
    assert_eq!(alpha["endpoints"][0]["url"], url_a);
    assert_eq!(get(&http, config(&base, "alpha")).await.1["max_size"], 10);
    assert_eq!(get(&http, server(&base, "beta")).await.0, 404);

    // A pool-config change only: applied, nothing drained.
    std::fs::write(
        &path,
        file(
            url_a,
            "{ enabled = true, max_size = 20, strategy = \"sticky\" }",
            false,
        ),
    )
    .unwrap();
    gw.signal("HUP");
    let line = gw.wait_for("configuration reloaded").await;
    assert!(line.contains("drained (connection changed) []"), "{line}");
    assert!(line.contains(r#"updated ["alpha"]"#), "{line}");
    let (_, c) = get(&http, config(&base, "alpha")).await;
    assert_eq!(
        (&c["max_size"], &c["strategy"]),
        (&Value::from(20), &Value::from("sticky"))
    );

    // A new URL: the server is replaced and drained; a new server is added.
    std::fs::write(
        &path,
        file(
            url_b,
            "{ enabled = true, max_size = 20, strategy = \"sticky\" }",
            true,
        ),
    )
    .unwrap();
    gw.signal("HUP");
    let line = gw.wait_for("configuration reloaded").await;
    assert!(line.contains(r#"added ["beta"]"#), "{line}");
    assert!(
        line.contains(r#"drained (connection changed) ["alpha"]"#),
        "{line}"
    );
    let (_, alpha) = get(&http, server(&base, "alpha")).await;
    assert_eq!(alpha["endpoints"][0]["url"], url_b);
    assert_eq!(get(&http, config(&base, "alpha")).await.1["max_size"], 20);
    let (status, beta) = get(&http, server(&base, "beta")).await;
    assert_eq!(
        (status, &beta["endpoints"][0]["transport"]),
        (200, &Value::from("sse"))
    );

    // An invalid file: logged with the reason, nothing applied.
    std::fs::write(
        &path,
        file(url_a, "{ enabled = true, max_size = 5000 }", false),
    )
    .unwrap();
    gw.signal("HUP");
    let line = gw.wait_for("not reloaded").await;
    assert!(line.contains("max_size") && line.contains("5000"), "{line}");
    let (_, alpha) = get(&http, server(&base, "alpha")).await;
    assert_eq!(alpha["endpoints"][0]["url"], url_b, "nothing applied");
    assert_eq!(get(&http, config(&base, "alpha")).await.1["max_size"], 20);

    gw.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
