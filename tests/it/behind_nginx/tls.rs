//! The README's nginx block as written, with a throwaway certificate: it serves event
//! streams over HTTP/2 and TLS (read with `curl`).

use super::*;

/// README's configuration as written, with its certificate comment replaced by `certificate`
/// and the port of its `listen` line by `listen` (everything else on that line stays).
fn readme_tls_config(herald: SocketAddr, listen: SocketAddr, certificate: &SelfSigned) -> String {
    let listen = format!("listen {listen} ");
    let certificate = format!(
        "ssl_certificate {}; ssl_certificate_key {};",
        certificate.cert().display(),
        certificate.key().display()
    );
    readme_block_with(
        herald,
        &[
            ("listen 443 ", listen.as_str()),
            ("# ssl_certificate ...;", certificate.as_str()),
        ],
    )
}

/// Debian's `openssl`, which makes the throwaway certificate.
const OPENSSL_BIN: &str = "/usr/bin/openssl";

/// Debian's `curl` (built with nghttp2): the HTTP/2 client.
const CURL_BIN: &str = "/usr/bin/curl";

/// A self-signed certificate for `127.0.0.1` and its key, in a directory removed on drop.
struct SelfSigned {
    dir: PathBuf,
}

impl SelfSigned {
    fn create() -> SelfSigned {
        assert!(
            Path::new(OPENSSL_BIN).exists(),
            "{OPENSSL_BIN} is missing: the TLS test makes its certificate with it \
             (apt-get install -y openssl)"
        );
        let dir = std::env::temp_dir().join(format!("herald-nginx-{}-cert", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let certificate = SelfSigned { dir };
        let output = Command::new(OPENSSL_BIN)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(certificate.key())
            .arg("-out")
            .arg(certificate.cert())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        certificate
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 12: README's block as written, `listen ... ssl http2` and a real certificate where it
/// has a comment, in a real nginx: a client that offers HTTP/2 over TLS gets it (a browser
/// then shares one connection among all its streams), and an event stream flows through it.
#[test]
fn readme_nginx_block_serves_sse_over_http2_and_tls() {
    assert!(
        Path::new(CURL_BIN).exists(),
        "{CURL_BIN} is missing: the TLS test's HTTP/2 client (apt-get install -y curl)"
    );
    let herald = HeraldProcess::spawn(&[]);
    let certificate = SelfSigned::create();
    let nginx = Nginx::start("tls", |listen| {
        readme_tls_config(herald.addr, listen, &certificate)
    });
    let mut curl = Command::new(CURL_BIN)
        .args([
            "--silent",
            "--show-error",
            "--no-buffer",
            "--include",
            "--http2",
        ])
        .arg("--cacert")
        .arg(certificate.cert())
        .arg(format!("https://{}/events?topic=h2", nginx.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = PipeLines::new(curl.stdout.take().unwrap());
    let mut stderr = PipeLines::new(curl.stderr.take().unwrap());
    let deadline = Instant::now() + DEADLINE;
    let mut next_line = |waiting_for: &str| match stdout.next_before(deadline) {
        Next::Line(line) => line.trim_end().to_owned(),
        other => {
            let _ = stderr.next_before(Instant::now() + Duration::from_millis(100));
            panic!(
                "curl: {other:?} while waiting for {waiting_for}; stdout {:#?}; stderr {:#?}",
                stdout.seen(),
                stderr.seen()
            )
        }
    };
    assert_eq!(next_line("the status line"), "HTTP/2 200");
    while !next_line("the opening retry: frame").starts_with("retry: ") {}
    let id = publish_form(herald.addr, &[("topic", "h2"), ("data", "over http2")]);
    while next_line("the event's id") != format!("id: {id}") {}
    assert_eq!(next_line("the event's data"), "data: over http2");
    let _ = curl.kill();
    let _ = curl.wait();
}
