//! A small HTTP/1.1 server (optionally TLS) shared by the mock apiserver and the fake components.
//!
//! It can stop listening and resume on the same port: the apiserver's `Fault::Down` must make
//! connections be *refused* (not accepted and then hung), and established keep-alive connections
//! must die too, otherwise Envoy's connection pool would keep talking to a "down" server.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::rt::io_runtime;

/// The response type every handler produces: a whole body, cheap to clone when it is shared `Bytes`.
pub type Resp = Response<Full<Bytes>>;
/// Boxed future returned by a [`Handler`].
pub type RespFuture = Pin<Box<dyn Future<Output = Resp> + Send>>;
/// A request handler; it runs on the shared io runtime, one task per connection.
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> RespFuture + Send + Sync>;

/// A running listener plus the signal that its socket has been dropped.
struct Accepting {
    task: JoinHandle<()>,
    closed: mpsc::Receiver<()>,
}

/// Holds the listener and the close signal together; fields drop in order, so the signal fires
/// only after the socket is closed.
struct ListenerGuard {
    listener: TcpListener,
    _closed: mpsc::Sender<()>,
}

pub struct HttpServer {
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    accepting: Mutex<Option<Accepting>>,
    /// Bumped to make every open connection drop (stop listening, shutdown).
    epoch: watch::Sender<u64>,
}

impl HttpServer {
    /// Binds `addr` (port 0 = ephemeral) and starts serving on the shared runtime.
    pub fn start(
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
        handler: Handler,
    ) -> anyhow::Result<Arc<Self>> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let (epoch, _) = watch::channel(0u64);
        let server = Arc::new(HttpServer {
            addr,
            tls,
            handler,
            accepting: Mutex::new(None),
            epoch,
        });
        server.spawn_accept(listener);
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_listening(&self) -> bool {
        self.accepting.lock().unwrap().is_some()
    }

    /// Closes the listening socket (new connections are refused) and drops every open connection.
    /// Returns once the socket is closed.
    pub fn stop_listening(&self) {
        let accepting = self.accepting.lock().unwrap().take();
        if let Some(a) = accepting {
            a.task.abort();
            // The runtime drops the aborted task (and with it the socket) on one of its threads.
            let _ = a.closed.recv_timeout(Duration::from_secs(5));
        }
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Rebinds the same address after [`stop_listening`](Self::stop_listening).
    pub fn resume_listening(&self) -> anyhow::Result<()> {
        if self.is_listening() {
            return Ok(());
        }
        // SO_REUSEADDR makes this succeed at once even with connections in TIME_WAIT; retry briefly
        // in case the kernel has not released the port yet.
        let mut last_err = None;
        for _ in 0..50 {
            match bind(self.addr) {
                Ok(l) => {
                    self.spawn_accept(l);
                    return Ok(());
                }
                Err(e) => {
                    last_err = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("rebinding {}", self.addr)))
    }

    /// Stops listening and drops all connections; idempotent.
    pub fn shutdown(&self) {
        self.stop_listening();
    }

    fn spawn_accept(&self, listener: TcpListener) {
        let (tx, rx) = mpsc::channel();
        let guard = ListenerGuard {
            listener,
            _closed: tx,
        };
        let tls = self.tls.clone();
        let handler = self.handler.clone();
        let epoch = self.epoch.subscribe();
        let task = io_runtime().spawn(async move {
            // Own the whole guard (not just its listener field) so the close signal fires only when
            // this future, and with it the socket, is dropped.
            let guard = guard;
            loop {
                let (stream, _) = match guard.listener.accept().await {
                    Ok(s) => s,
                    Err(_) => {
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let tls = tls.clone();
                let handler = handler.clone();
                let mut epoch = epoch.clone();
                epoch.mark_unchanged();
                tokio::spawn(async move {
                    let serve = async {
                        match tls {
                            Some(acceptor) => {
                                // A failed handshake just ends this connection.
                                if let Ok(s) = acceptor.accept(stream).await {
                                    serve_connection(TokioIo::new(s), handler).await
                                }
                            }
                            None => serve_connection(TokioIo::new(stream), handler).await,
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = epoch.changed() => {}
                    }
                });
            }
        });
        *self.accepting.lock().unwrap() = Some(Accepting { task, closed: rx });
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve_connection<I>(io: I, handler: Handler)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let h = handler.clone();
        async move { Ok::<_, Infallible>(h(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc)
        .await;
}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    // Runs outside the runtime's context too: register the socket with the shared runtime.
    let _enter = io_runtime().enter();
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

/// A response with a body and content type (shared by the doubles).
pub fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}
