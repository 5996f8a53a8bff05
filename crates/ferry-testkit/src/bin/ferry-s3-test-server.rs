//! `ferry-s3-test-server --root DIR --port PORT --access-key AK --secret-key SK`
//!
//! Serves s3s-fs over DIR on 127.0.0.1:PORT (SigV4 auth checked, no faults) until
//! killed. Prints `listening on http://127.0.0.1:PORT` once ready.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: ferry-s3-test-server --root DIR --port PORT --access-key AK --secret-key SK";

struct Args {
    root: PathBuf,
    port: u16,
    access_key: String,
    secret_key: String,
}

fn parse_args() -> Result<Args, String> {
    let mut root = None;
    let mut port = None;
    let mut access_key = None;
    let mut secret_key = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        if name == "-h" || name == "--help" {
            return Err(String::new());
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("missing value for {name}"))?,
        };
        match name.as_str() {
            "--root" => root = Some(PathBuf::from(value)),
            "--port" => {
                port = Some(value.parse::<u16>().map_err(|e| format!("invalid --port {value:?}: {e}"))?)
            }
            "--access-key" => access_key = Some(value),
            "--secret-key" => secret_key = Some(value),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        root: root.ok_or("--root is required")?,
        port: port.ok_or("--port is required")?,
        access_key: access_key.ok_or("--access-key is required")?,
        secret_key: secret_key.ok_or("--secret-key is required")?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("ferry-s3-test-server: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.root) {
        eprintln!("ferry-s3-test-server: cannot create {}: {e}", args.root.display());
        return ExitCode::FAILURE;
    }
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry-s3-test-server: cannot bind 127.0.0.1:{}: {e}", args.port);
            return ExitCode::FAILURE;
        }
    };
    let port = listener.local_addr().map_or(args.port, |a| a.port());
    let serve = ferry_testkit::serve(listener, &args.root, &args.access_key, &args.secret_key);
    let mut serve = std::pin::pin!(serve);
    // `serve` builds the service before its first await; poll it once before
    // announcing readiness so configuration errors are reported first.
    match futures::poll!(serve.as_mut()) {
        std::task::Poll::Ready(Err(e)) => {
            eprintln!("ferry-s3-test-server: {e}");
            return ExitCode::FAILURE;
        }
        std::task::Poll::Ready(Ok(())) => return ExitCode::SUCCESS,
        std::task::Poll::Pending => {}
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://127.0.0.1:{port}");
        let _ = out.flush();
    }
    tokio::select! {
        res = serve => {
            if let Err(e) = res {
                eprintln!("ferry-s3-test-server: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
    }
}
