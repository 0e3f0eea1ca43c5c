//! The control socket end to end: `serve_control` with a mock handler, driven through the real
//! socket by the CLI's own client, by raw lines (malformed JSON, unknown commands, wrong types,
//! overlong lines, pipelining, silent clients, many concurrent clients), and by the `snapblk`
//! binary itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};
use snapblk::control::protocol::*;
use snapblk::control::{
    bind_control, serve_control_with, Client, ClientError, ControlHandler, ControlLimits,
    ControlStop,
};
use snapblk::qos::QosLimits;
use tempfile::TempDir;

/// Answers every command with canned results (`respond` has no side effects, so tests can
/// compute the expected answer); some names trigger errors.
#[derive(Default)]
struct MockHandler {
    seen: Mutex<Vec<Request>>,
    merge_polls: AtomicU64,
}

fn snapshot_info(name: &str) -> SnapshotInfo {
    SnapshotInfo {
        name: name.into(),
        origin: "base".into(),
        cow: format!("/cow/{name}.cow").into(),
        store: Store::P,
        chunk_size: 4096,
        status_line: "32/16384 16".into(),
        used_bytes: 16384,
        total_bytes: 8 << 20,
        exceptions: 3,
        state: NodeState::Active,
        reason: None,
        resettable: false,
        exports: vec![],
    }
}

fn merge_status(snapshot: &str, remaining: u64) -> MergeStatus {
    MergeStatus {
        snapshot: snapshot.into(),
        origin: "base".into(),
        state: if remaining == 0 {
            MergeState::Finished
        } else {
            MergeState::Running
        },
        remaining_exceptions: remaining,
        total_exceptions: 4,
        merged_bytes: (4 - remaining) * 4096,
        elapsed_s: 0.5,
    }
}

fn not_found(name: &str) -> ControlError {
    ControlError::new(ErrorCode::NotFound, format!("no node named {name:?}"))
}

impl MockHandler {
    fn respond(&self, req: &Request) -> Result<Response, ControlError> {
        Ok(match req {
            Request::Hello {} => Response::Hello(HelloInfo {
                protocol: PROTOCOL_VERSION,
                version: "test".into(),
                commands: COMMANDS.iter().map(|c| c.to_string()).collect(),
            }),
            Request::OriginAdd(a) => Response::Origin(OriginInfo {
                name: a.name.clone(),
                image: a.image.clone(),
                size_bytes: 1 << 30,
                snapshots: vec![],
            }),
            Request::OriginRemove(r) if r.name == "base" && !r.force => {
                return Err(ControlError::new(
                    ErrorCode::HasSnapshots,
                    "origin \"base\" still has snapshots",
                ))
            }
            Request::SnapshotDelete(r) if r.name == "missing" => return Err(not_found(&r.name)),
            Request::SnapshotDelete(r) => Response::Deleted(SnapshotDeleted {
                name: r.name.clone(),
                cow_files: vec![format!("/cow/{}.cow", r.name).into()],
                cow_removed: r.remove_cow,
            }),
            Request::OriginRemove(_) | Request::ExportRemove(_) | Request::QosGroupRemove(_) => {
                Response::Done(Done {})
            }
            Request::ExportQos(q) => Response::QosExports(QosExportList {
                exports: vec![QosExport {
                    socket: q.socket.clone().unwrap_or_default(),
                    node: "s1".into(),
                    qos: q.qos.unwrap_or_default(),
                    qos_group: q.qos_group.clone(),
                }],
            }),
            Request::QosGroupSet(g) => Response::QosGroup(QosGroupInfo {
                name: g.name.clone(),
                qos: g.qos,
                members: vec!["/run/s1.sock".into()],
            }),
            Request::QosGroupList {} => Response::QosGroups(QosGroupList {
                groups: vec![QosGroupInfo {
                    name: "tenant".into(),
                    qos: limits(),
                    members: vec![],
                }],
            }),
            Request::SnapshotCreate(c) => Response::Created(CreateResult {
                names: c.snapshots.iter().map(|s| s.name.clone()).collect(),
                pause_us: c
                    .snapshots
                    .iter()
                    .map(|s| (s.origin.clone(), 42))
                    .collect::<BTreeMap<_, _>>(),
            }),
            Request::SnapshotList {} => Response::Snapshots(SnapshotList {
                snapshots: vec![snapshot_info("s1"), snapshot_info("s2")],
            }),
            Request::ExportAdd(a) => Response::Export(ExportInfo {
                node: a.node.clone(),
                socket: a.socket.clone(),
                readonly: a.readonly,
                num_queues: a.num_queues,
                connected: false,
            }),
            Request::ExportList {} => Response::Exports(ExportList {
                exports: vec![ExportInfo {
                    node: "s1".into(),
                    socket: "/run/s1.sock".into(),
                    readonly: false,
                    num_queues: 2,
                    connected: true,
                }],
            }),
            // Echoes the node name, so concurrent clients can check they got their own answer.
            Request::Status(s) => Response::Status(StatusReport {
                nodes: vec![NodeStatus {
                    node: s.node.clone().unwrap_or_else(|| "base".into()),
                    kind: NodeKind::Origin,
                    origin: None,
                    status_line: "0 2097152 snapshot-origin".into(),
                    used_bytes: 1 << 30,
                    total_bytes: 1 << 30,
                    exceptions: 0,
                    state: NodeState::Active,
                    reason: None,
                    warning: None,
                }],
                config_not_applied: vec![],
            }),
            Request::Stats {} => Response::Stats(StatsReport {
                exports: vec![ExportStats {
                    socket: "/run/s1.sock".into(),
                    node: "s1".into(),
                    requests: 10,
                    read_bytes: 4096,
                    write_bytes: 8192,
                    errors: 0,
                    in_flight: 1,
                    connected: true,
                    qos: Default::default(),
                }],
                snapshots: vec![SnapshotStats {
                    name: "s1".into(),
                    copies: 2,
                    parked: 0,
                    commits: 1,
                }],
            }),
            Request::MergeStart(s) if s.snapshot == "missing" => {
                return Err(not_found(&s.snapshot))
            }
            Request::MergeStart(s) => Response::Merge(merge_status(&s.snapshot, 4)),
            // One exception further along per poll (the count advances in `handle`).
            Request::MergeStatus(_) => {
                let n = self.merge_polls.load(Ordering::SeqCst) + 1;
                Response::Merges(MergeList {
                    merges: vec![merge_status("s1", 4u64.saturating_sub(n))],
                })
            }
            Request::CloneReset(s) if s.snapshot == "panic" => panic!("mock handler panics"),
            // The wrong kind of result: the server must not pass it on.
            Request::CloneReset(s) if s.snapshot == "wrong" => Response::Done(Done {}),
            Request::CloneReset(s) => Response::Snapshot(snapshot_info(&s.snapshot)),
            Request::Events(e) => Response::Events(EventList {
                events: vec![Event {
                    seq: e.since.unwrap_or(1),
                    time: 1_700_000_000,
                    kind: EventKind::SnapshotOverflow,
                    node: "s2".into(),
                    message: "snapshot s2 overflowed".into(),
                }],
                next_seq: e.since.unwrap_or(1) + 1,
            }),
        })
    }
}

impl ControlHandler for MockHandler {
    fn handle(&self, req: Request) -> Result<Response, ControlError> {
        let resp = self.respond(&req);
        match &req {
            Request::MergeStart(_) => self.merge_polls.store(0, Ordering::SeqCst),
            Request::MergeStatus(_) => {
                self.merge_polls.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(req);
        resp
    }
}

/// A control server on a temporary socket; stopped and joined on drop.
struct Server {
    _dir: TempDir,
    path: PathBuf,
    handler: Arc<MockHandler>,
    stop: Arc<ControlStop>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        Server::with_limits(ControlLimits::default())
    }

    fn with_limits(limits: ControlLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind_control(&path, None).unwrap();
        let handler = Arc::new(MockHandler::default());
        let stop = ControlStop::new().unwrap();
        let (h, s) = (handler.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            serve_control_with(listener, h, s, limits).unwrap();
        });
        Server {
            _dir: dir,
            path,
            handler,
            stop,
            thread: Some(thread),
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.path).unwrap()
    }

    fn raw(&self) -> Raw {
        Raw::connect(&self.path)
    }

    fn stop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client speaking raw lines.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let w = UnixStream::connect(path).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Raw { w, r }
    }

    fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "no complete reply line: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    fn ask(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }

    /// True once the server has closed the connection (EOF with nothing left to read).
    fn at_eof(&mut self) -> bool {
        let mut rest = Vec::new();
        self.r
            .read_to_end(&mut rest)
            .map(|n| n == 0)
            .unwrap_or(true)
    }
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "{reply}");
    reply["error"]["code"].as_str().unwrap()
}

fn one_of_each() -> Vec<Request> {
    vec![
        Request::Hello {},
        Request::OriginAdd(OriginAdd {
            name: "o2".into(),
            image: "/images/o2.img".into(),
            copy_cap: None,
            ceph_conf: None,
            ceph_id: None,
            ceph_keyring: None,
        }),
        Request::OriginRemove(RemoveNode {
            name: "o2".into(),
            force: false,
        }),
        Request::SnapshotCreate(SnapshotCreate {
            snapshots: vec![
                NewSnapshot {
                    origin: "a".into(),
                    name: "a1".into(),
                    cow: "/cow/a1".into(),
                    store: Store::P,
                    chunk_size: Some(4096),
                    size: Some(8 << 20),
                    discard_zeroes_cow: false,
                    discard_passdown_origin: false,
                    resettable: true,
                    preallocate: false,
                },
                NewSnapshot {
                    origin: "b".into(),
                    name: "b1".into(),
                    cow: "/cow/b1".into(),
                    store: Store::N,
                    chunk_size: Some(8192),
                    size: None,
                    discard_zeroes_cow: true,
                    discard_passdown_origin: true,
                    resettable: false,
                    preallocate: false,
                },
            ],
            adopt: false,
        }),
        Request::SnapshotDelete(SnapshotDelete {
            name: "s1".into(),
            force: true,
            remove_cow: false,
        }),
        Request::SnapshotList {},
        Request::ExportAdd(ExportAdd {
            node: "s1".into(),
            socket: "/run/s1.sock".into(),
            readonly: true,
            num_queues: 2,
            queue_size: Some(64),
            serial: None,
            logical_block_size: None,
            writethrough: false,
            shared_writable: false,
            qos: Default::default(),
            qos_group: None,
        }),
        Request::ExportRemove(ExportRemove {
            socket: Some("/run/s1.sock".into()),
            node: None,
            force: true,
        }),
        Request::ExportList {},
        Request::Status(StatusArgs {
            node: Some("s1".into()),
        }),
        Request::Stats {},
        Request::MergeStart(SnapshotRef {
            snapshot: "s1".into(),
        }),
        Request::MergeStatus(MergeStatusArgs {
            snapshot: Some("s1".into()),
        }),
        Request::CloneReset(SnapshotRef {
            snapshot: "s2".into(),
        }),
        Request::Events(EventsArgs { since: Some(5) }),
        Request::ExportQos(ExportQos {
            node: None,
            socket: Some("/run/s1.sock".into()),
            qos: Some(limits()),
            qos_group: Some("tenant".into()),
        }),
        Request::QosGroupSet(QosGroupSet {
            name: "tenant".into(),
            qos: limits(),
        }),
        Request::QosGroupRemove(QosGroupRef {
            name: "tenant".into(),
        }),
        Request::QosGroupList {},
    ]
}

fn limits() -> QosLimits {
    let mut q = QosLimits::default();
    q.set_text("bps_write", "200M").unwrap();
    q.set("iops_total", 5000).unwrap();
    q
}

#[test]
fn every_command_round_trips_through_the_socket() {
    let server = Server::start();
    let mut client = server.client();
    let all = one_of_each();
    let mut cmds: Vec<&str> = all.iter().map(Request::cmd).collect();
    cmds.sort_unstable();
    let mut known = COMMANDS.to_vec();
    known.sort_unstable();
    assert_eq!(cmds, known, "the test covers every command");
    for req in &all {
        let expected = server.handler.respond(req).unwrap();
        let got = client.call(req).unwrap();
        assert_eq!(got, expected, "{}", req.cmd());
    }
    let seen = server.handler.seen.lock().unwrap().clone();
    assert_eq!(seen, all);
}

#[test]
fn error_replies_carry_their_stable_code() {
    let server = Server::start();
    let mut client = server.client();
    let remove = Request::OriginRemove(RemoveNode {
        name: "base".into(),
        force: false,
    });
    match client.call(&remove) {
        Err(ClientError::Remote(e)) => assert_eq!(e.code, ErrorCode::HasSnapshots),
        other => panic!("expected has_snapshots, got {other:?}"),
    }
    let delete = Request::SnapshotDelete(SnapshotDelete {
        name: "missing".into(),
        force: false,
        remove_cow: false,
    });
    match client.call(&delete) {
        Err(ClientError::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::NotFound);
            assert_eq!(e.to_string(), "no node named \"missing\" (not_found)");
        }
        other => panic!("expected not_found, got {other:?}"),
    }
    // The connection is still usable after error replies.
    assert!(matches!(
        client.call(&Request::Hello {}),
        Ok(Response::Hello(_))
    ));
}

#[test]
fn a_handler_panic_or_wrong_result_is_an_internal_error() {
    let server = Server::start();
    let mut client = server.client();
    for name in ["panic", "wrong"] {
        let req = Request::CloneReset(SnapshotRef {
            snapshot: name.into(),
        });
        match client.call(&req) {
            Err(ClientError::Remote(e)) => assert_eq!(e.code, ErrorCode::Internal),
            other => panic!("expected internal, got {other:?}"),
        }
    }
    assert!(client.call(&Request::Stats {}).is_ok());
}

#[test]
fn malformed_json_is_a_bad_request_and_the_connection_survives() {
    let server = Server::start();
    let mut raw = server.raw();
    for line in [
        "{",
        "not json",
        "[]",
        "\"hello\"",
        r#"{"v":1,"id":1,"cmd":"hello""#,
    ] {
        let r = raw.ask(line);
        assert_eq!(error_code(&r), "bad_request", "{line}");
        assert_eq!(r["id"], Value::Null);
        assert_eq!(r["v"], 1);
    }
    let r = raw.ask(r#"{"v":1,"id":8,"cmd":"hello"}"#);
    assert_eq!((r["ok"].clone(), r["id"].clone()), (json!(true), json!(8)));
    assert_eq!(r["result"]["protocol"], 1);
}

#[test]
fn invalid_utf8_is_a_bad_request() {
    let server = Server::start();
    let mut raw = server.raw();
    raw.w
        .write_all(b"{\"v\":1,\"id\":1,\"cmd\":\"\xff\xfe\"}\n")
        .unwrap();
    assert_eq!(error_code(&raw.recv()), "bad_request");
}

#[test]
fn unknown_commands_and_versions_have_their_own_codes() {
    let server = Server::start();
    let mut raw = server.raw();
    let r = raw.ask(r#"{"v":1,"id":3,"cmd":"origin.destroy","args":{}}"#);
    assert_eq!(
        (error_code(&r), r["id"].clone()),
        ("unknown_command", json!(3))
    );
    let r = raw.ask(r#"{"v":2,"id":4,"cmd":"hello"}"#);
    assert_eq!(
        (error_code(&r), r["id"].clone()),
        ("unsupported_version", json!(4))
    );
}

#[test]
fn wrong_types_and_missing_fields_are_bad_requests() {
    let server = Server::start();
    let mut raw = server.raw();
    for line in [
        r#"{"v":1,"id":5,"cmd":"snapshot.delete","args":{"name":["s1"]}}"#,
        r#"{"v":1,"id":5,"cmd":"snapshot.delete","args":{}}"#,
        r#"{"v":1,"id":5,"cmd":"export.add","args":{"node":"s1","socket":"/s","readonly":"yes"}}"#,
        r#"{"v":1,"id":5,"cmd":"events","args":{"since":-3}}"#,
        r#"{"v":1,"id":5,"cmd":"merge.start","args":"s1"}"#,
        r#"{"v":1,"id":5,"cmd":"stats","args":{"extra":true}}"#,
        r#"{"id":5,"cmd":"stats"}"#,
    ] {
        let r = raw.ask(line);
        assert_eq!(
            (error_code(&r), r["id"].clone()),
            ("bad_request", json!(5)),
            "{line}"
        );
    }
    assert!(server.handler.seen.lock().unwrap().is_empty());
}

#[test]
fn relative_paths_in_arguments_are_invalid() {
    let server = Server::start();
    let mut raw = server.raw();
    let r = raw.ask(r#"{"v":1,"id":6,"cmd":"export.add","args":{"node":"s1","socket":"s1.sock"}}"#);
    assert_eq!(error_code(&r), "invalid_argument");
    assert!(r["error"]["message"].as_str().unwrap().contains("relative"));
}

#[test]
fn a_two_mib_line_is_refused_and_the_connection_closed() {
    let server = Server::start();
    let mut raw = server.raw();
    let big = format!(
        r#"{{"v":1,"id":1,"cmd":"origin.add","args":{{"name":"{}","image":"/i"}}}}"#,
        "x".repeat(2 << 20)
    );
    // The server stops reading at the cap, so our write may fail part-way: that is fine.
    let _ = raw.w.write_all(big.as_bytes());
    let _ = raw.w.write_all(b"\n");
    let r = raw.recv();
    assert_eq!(
        (error_code(&r), r["id"].clone()),
        ("line_too_long", Value::Null)
    );
    assert!(raw.at_eof());
    // Others are unaffected.
    assert!(server.client().call(&Request::Hello {}).is_ok());
}

#[test]
fn pipelined_requests_are_answered_in_order_with_their_ids() {
    let server = Server::start();
    let mut raw = server.raw();
    let mut batch = String::new();
    for id in 1000..1050u64 {
        batch.push_str(&format!(
            "{{\"v\":1,\"id\":{id},\"cmd\":\"status\",\"args\":{{\"node\":\"n{id}\"}}}}\r\n\n"
        ));
    }
    raw.w.write_all(batch.as_bytes()).unwrap();
    for id in 1000..1050u64 {
        let r = raw.recv();
        assert_eq!(r["id"], id);
        assert_eq!(r["result"]["nodes"][0]["node"], format!("n{id}"));
    }
}

#[test]
fn a_last_request_without_newline_is_answered() {
    let server = Server::start();
    let mut raw = server.raw();
    raw.w
        .write_all(br#"{"v":1,"id":77,"cmd":"hello"}"#)
        .unwrap();
    raw.w.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(raw.recv()["id"], 77);
    assert!(raw.at_eof());
}

#[test]
fn thirty_two_concurrent_clients_get_their_own_answers() {
    let server = Server::start();
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let mut client = server.client();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let node = format!("c{t}-{i}");
                    let req = Request::Status(StatusArgs {
                        node: Some(node.clone()),
                    });
                    match client.call(&req).unwrap() {
                        Response::Status(s) => assert_eq!(s.nodes[0].node, node),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.handler.seen.lock().unwrap().len(), 32 * 50);
}

#[test]
fn silent_and_half_line_clients_do_not_block_others() {
    let server = Server::start();
    let _silent = server.raw();
    let mut half = server.raw();
    half.w.write_all(br#"{"v":1,"id":1,"cmd":"#).unwrap();
    let mut client = server.client();
    for _ in 0..3 {
        assert!(client.call(&Request::ExportList {}).is_ok());
    }
}

#[test]
fn clients_beyond_the_limit_are_told_busy() {
    let server = Server::with_limits(ControlLimits {
        max_clients: 2,
        ..ControlLimits::default()
    });
    let mut a = server.raw();
    let mut b = server.raw();
    // Both are being served (their threads answer), so they count against the limit.
    assert_eq!(a.ask(r#"{"v":1,"id":1,"cmd":"hello"}"#)["ok"], true);
    assert_eq!(b.ask(r#"{"v":1,"id":1,"cmd":"hello"}"#)["ok"], true);
    let mut c = server.raw();
    let r = c.recv();
    assert_eq!((error_code(&r), r["id"].clone()), ("busy", Value::Null));
    assert!(c.at_eof());
    drop(a);
    // Once a slot frees up, a new client is served. The slot frees when a's thread sees the
    // hang-up, which this test cannot observe, so it retries (bounded by a deadline).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let served = std::iter::repeat_with(|| {
        let mut d = server.raw();
        // A refused connection may already be closed: ignore a failed write, read the reply.
        let _ = d.w.write_all(b"{\"v\":1,\"id\":2,\"cmd\":\"hello\"}\n");
        d.recv()["ok"] == true
    })
    .take_while(|_| std::time::Instant::now() < deadline)
    .any(|ok| ok);
    assert!(served);
    drop(b);
}

#[test]
fn stopping_the_server_disconnects_idle_clients() {
    let mut server = Server::start();
    let mut idle = server.raw();
    assert_eq!(idle.ask(r#"{"v":1,"id":1,"cmd":"hello"}"#)["ok"], true);
    server.stop();
    assert!(idle.at_eof());
}

#[test]
fn control_socket_is_created_with_mode_0600() {
    let server = Server::start();
    let meta = std::fs::metadata(&server.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_group_makes_the_socket_0660_and_group_owned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    let _l = bind_control(&path, Some(&gid.to_string())).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, gid)
    );
    let err = bind_control(&dir.path().join("d.sock"), Some("no-such-group-xyz")).unwrap_err();
    assert!(err.to_string().contains("no-such-group-xyz"), "{err}");
}

#[test]
fn bind_refuses_relative_paths_other_files_and_live_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let err = bind_control(Path::new("control.sock"), None).unwrap_err();
    assert!(err.to_string().contains("relative"), "{err}");

    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(bind_control(&file, None).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let live = dir.path().join("live.sock");
    let _l = bind_control(&live, None).unwrap();
    let err = bind_control(&live, None).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn bind_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let l = bind_control(&path, None).unwrap();
    drop(l);
}

#[test]
fn client_reports_an_unreachable_socket_as_a_connection_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect(&dir.path().join("none.sock"))
        .err()
        .expect("connect must fail");
    assert!(err.is_connection());
}

// ---- the snapblk binary against the mock server ----

fn snapblk(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(args)
        .arg("--control")
        .arg(&server.path)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_lists_snapshots_as_a_table_and_as_json() {
    let server = Server::start();
    let o = snapblk(&server, &["snapshot", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.contains("s1") && out.contains("s2") && out.contains("8.0 MiB"),
        "{out}"
    );

    let o = snapblk(&server, &["snapshot", "list", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["snapshots"][1]["name"], "s2");
}

#[test]
fn cli_sends_what_the_command_line_says() {
    let server = Server::start();
    let cwd = std::env::current_dir().unwrap();
    let o = snapblk(
        &server,
        &[
            "snapshot",
            "create",
            "a",
            "a1",
            "--cow",
            "a1.cow",
            "--store",
            "po",
            "--chunk-size",
            "8K",
            "--size",
            "1G",
            "--with",
            "b:b1:/cow/b1",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("created a1, b1"), "{}", stdout(&o));
    let seen = server.handler.seen.lock().unwrap().clone();
    let Request::SnapshotCreate(c) = &seen[0] else {
        panic!("sent {seen:?}")
    };
    assert_eq!(c.snapshots.len(), 2);
    let a = &c.snapshots[0];
    assert_eq!(
        a.cow,
        cwd.join("a1.cow"),
        "relative paths are made absolute"
    );
    assert_eq!(
        (a.store, a.chunk_size, a.size),
        (Store::PO, Some(8192), Some(1 << 30))
    );
    assert_eq!(c.snapshots[1].cow, PathBuf::from("/cow/b1"));
}

#[test]
fn cli_exit_codes_distinguish_refusals_usage_and_connection() {
    let server = Server::start();
    let o = snapblk(&server, &["snapshot", "delete", "missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "error: no node named \"missing\" (not_found)"
    );

    let o = snapblk(&server, &["snapshot", "create", "a"]);
    assert_eq!(o.status.code(), Some(2));

    let o = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["status", "--control", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
}

#[test]
fn cli_takes_the_socket_from_the_environment() {
    let server = Server::start();
    let o = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["events", "--since", "9"])
        .env("SNAPBLK_CONTROL", &server.path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("2023-11-14T22:13:20Z") && out.contains("snapshot_overflow"),
        "{out}"
    );
}

#[test]
fn cli_merge_wait_polls_until_the_merge_finishes() {
    let server = Server::start();
    let o = snapblk(&server, &["merge", "start", "s1", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("100%") && last.contains("finished"), "{out}");
    assert!(server.handler.merge_polls.load(Ordering::SeqCst) >= 4);

    let o = snapblk(&server, &["merge", "start", "missing", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn cli_stats_prints_prometheus_metrics_from_stats_status_and_merges() {
    let server = Server::start();
    let o = snapblk(&server, &["stats", "--format", "prometheus"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "# TYPE snapblk_export_requests_total counter\n",
        "snapblk_export_requests_total{export=\"/run/s1.sock\",node=\"s1\"} 10\n",
        "snapblk_export_in_flight_requests{export=\"/run/s1.sock\",node=\"s1\"} 1\n",
        "snapblk_export_connected{export=\"/run/s1.sock\",node=\"s1\"} 1\n",
        "snapblk_origin_size_bytes{origin=\"base\"} 1073741824\n",
        "snapblk_snapshot_copies_total{snapshot=\"s1\",origin=\"\"} 2\n",
        "snapblk_merge_remaining_exceptions{snapshot=\"s1\",origin=\"base\"} 3\n",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    let seen: Vec<&'static str> = server
        .handler
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(Request::cmd)
        .collect();
    assert_eq!(seen, ["stats", "status", "merge.status"]);

    let o = snapblk(&server, &["stats", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["exports"][0]["in_flight"], 1);
    let o = snapblk(&server, &["stats", "--format", "prometheus", "--json"]);
    assert_eq!(o.status.code(), Some(2), "--json and --format conflict");
}

#[test]
fn cli_covers_the_other_commands() {
    let server = Server::start();
    let cases: &[(&[&str], &str)] = &[
        (
            &["origin", "add", "o2", "--image", "/img/o2"],
            "origin o2 added",
        ),
        (&["origin", "remove", "o2"], "origin o2 removed"),
        (
            &[
                "export",
                "add",
                "s1",
                "--socket",
                "/run/x.sock",
                "--readonly",
            ],
            "read-only",
        ),
        (&["export", "remove", "--socket", "/run/x.sock"], "removed"),
        (&["export", "list"], "CONNECTED"),
        (&["status", "s1"], "snapshot-origin"),
        (&["stats"], "COMMITS"),
        (&["merge", "status"], "REMAINING"),
        (&["clone", "reset", "s2"], "snapshot s2 reset"),
    ];
    for (args, want) in cases {
        let o = snapblk(&server, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains(want), "{args:?}: {}", stdout(&o));
    }
}
