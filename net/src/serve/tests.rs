//! The defences themselves, through real sockets on loopback, with the probes every port's tests
//! share (`iotstamp_testkit::serving`).

use std::sync::Mutex;
use std::time::Instant;

use axum::routing::{get, put};
use iotstamp_core::pki;
use iotstamp_testkit::serving::{self, InFlight, Port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::*;

const SHORT: Duration = Duration::from_millis(300);

fn defences(max_connections: usize) -> Defences {
    Defences {
        max_connections,
        handshake_timeout: SHORT,
        header_read_timeout: SHORT,
        drain: Duration::from_secs(2),
    }
}

struct Served {
    port: Port,
    refusals: Arc<Mutex<Vec<Refusal>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn listener(tls: Option<TlsAcceptor>, defences: Defences) -> (Listener, Arc<Mutex<Vec<Refusal>>>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let listener = Listener::new(tcp, tls, defences)
        .on_refused(Arc::new(move |r: Refusal| seen.lock().unwrap().push(r)));
    (listener, refusals)
}

/// An HTTP port: `/healthz` answers at once, `PUT /echo` answers with the body it read.
async fn http_port(tls: bool, defences: Defences) -> Served {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/echo", put(|body: String| async move { body }));
    let (acceptor, client) = match tls {
        true => {
            let (a, c) = tls_pair();
            (Some(a), Some(c))
        }
        false => (None, None),
    };
    let (listener, refusals) = listener(acceptor, defences).await;
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(listener.serve_http(app, shutdown));
    let port = match client {
        Some(c) => Port::tls(addr, c, "127.0.0.1"),
        None => Port::plain(addr),
    };
    Served {
        port,
        refusals,
        stop,
        task,
    }
}

/// A port whose handler echoes until the client closes (or shutdown is asked).
async fn echo_port(defences: Defences) -> Served {
    let (listener, refusals) = listener(None, defences).await;
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(listener.serve(shutdown, |mut stream, _, mut stop| async move {
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if stream.write_all(&buf[..n]).await.is_err() { return },
                },
                _ = stopped(&mut stop) => return,
            }
        }
    }));
    Served {
        port: Port::plain(addr),
        refusals,
        stop,
        task,
    }
}

fn tls_pair() -> (TlsAcceptor, Arc<rustls::ClientConfig>) {
    let now = iotstamp_core::clock::unix_secs() as i64 - 60;
    let day = Duration::from_secs(86_400);
    let ca = pki::new_ca("ca", now, day).unwrap();
    let cert = pki::issue_server_cert(&ca, &["127.0.0.1".into()], now, day).unwrap();
    let server = tls::server_config_from_pem(&cert.cert_pem, &cert.key_pem, &[b"http/1.1"]).unwrap();
    (
        TlsAcceptor::from(server),
        tls::client_config_from_pem(&ca.cert_pem).unwrap(),
    )
}

async fn get_healthz(port: &Port) -> String {
    serving::get(port, "/healthz").await.expect("a connection")
}

async fn echoes(conn: &mut serving::Conn) -> bool {
    let mut buf = [0u8; 4];
    conn.write_all(b"ping").await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut buf)).await,
            Ok(Ok(4))
        )
}

#[tokio::test]
async fn a_slowloris_client_is_cut_at_the_header_deadline() {
    for tls in [false, true] {
        let served = http_port(tls, defences(10)).await;
        assert!(get_healthz(&served.port).await.starts_with("HTTP/1.1 200"));
        let (cut_after, answer) = serving::slowloris(&served.port, Duration::from_secs(3)).await;
        assert!(
            cut_after >= SHORT - Duration::from_millis(50),
            "cut after {cut_after:?}"
        );
        assert!(
            !answer.contains("200"),
            "a request without its headers' end was served: {answer}"
        );
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_the_tls_handshake_is_dropped_at_the_deadline() {
    let served = http_port(true, defences(10)).await;
    let kept = serving::silent_socket_kept(served.port.addr, Duration::from_secs(3)).await;
    assert!(kept >= SHORT - Duration::from_millis(50), "closed after {kept:?}");
    assert_eq!(*served.refusals.lock().unwrap(), vec![Refusal::TlsTimeout]);
    // A client that does the handshake is served.
    assert!(get_healthz(&served.port).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn the_connection_over_the_limit_is_closed_at_once_until_a_slot_frees() {
    let served = echo_port(defences(2)).await;
    let mut first = served.port.open().await.unwrap();
    let mut second = served.port.open().await.unwrap();
    assert!(echoes(&mut first).await && echoes(&mut second).await);

    assert!(
        serving::closed_at_once(served.port.addr).await,
        "a third connection was kept"
    );
    assert_eq!(*served.refusals.lock().unwrap(), vec![Refusal::Limit]);

    drop(first);
    // The slot frees when the first connection's task ends.
    let mut served_again = false;
    for _ in 0..50 {
        let mut next = served.port.open().await.unwrap();
        if echoes(&mut next).await {
            served_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served_again, "no connection was served after a slot freed");
    assert!(echoes(&mut second).await);
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    // A long header deadline, so that only the drain can close the idle connection below.
    let long_headers = Defences {
        header_read_timeout: Duration::from_secs(10),
        ..defences(10)
    };
    let served = http_port(false, long_headers).await;
    let in_flight = InFlight::start(&served.port, "PUT", "/echo", &[], b"in flight").await;
    let mut idle = served.port.open().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    served.stop.send(true).unwrap();

    assert!(
        serving::refuses_new_connections(served.port.addr).await,
        "still accepting after shutdown"
    );
    let answer = in_flight.finish().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("in flight"), "{answer}");
    // An idle connection is closed at once rather than held to the end of the drain (2 s).
    serving::read_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "idle connection closed after {:?}",
        asked.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(1), served.task)
        .await
        .expect("serve did not return once its connections ended")
        .unwrap();
}

#[tokio::test]
async fn a_handler_that_ignores_shutdown_is_dropped_at_the_end_of_the_drain() {
    let (listener, _) = listener(None, defences(10)).await;
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(listener.serve(shutdown, |stream, _, _| async move {
        // Holds the connection open forever, whatever is asked.
        let _held = stream;
        std::future::pending::<()>().await
    }));
    let mut held = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(true).unwrap();
    let (_, closed_after) = serving::read_to_close(&mut held, Duration::from_secs(5)).await;
    assert!(
        closed_after >= Duration::from_millis(1900),
        "dropped after {closed_after:?}"
    );
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("serve did not return at the end of the drain")
        .unwrap();
}
