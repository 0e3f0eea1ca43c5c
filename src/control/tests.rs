//! Unit tests of the wire format: request parsing and validation, response encoding and
//! decoding, error codes. The socket-level tests live in tests/control_protocol.rs.

use std::path::PathBuf;

use serde_json::json;

use super::protocol::*;

fn one_of_each() -> Vec<Request> {
    vec![
        Request::Hello {},
        Request::OriginAdd(OriginAdd {
            name: "o".into(),
            image: "/img".into(),
            copy_cap: Some(8),
            ceph_conf: None,
            ceph_id: None,
            ceph_keyring: None,
        }),
        Request::OriginRemove(RemoveNode {
            name: "o".into(),
            force: true,
        }),
        Request::SnapshotCreate(SnapshotCreate {
            snapshots: vec![NewSnapshot {
                origin: "o".into(),
                name: "s".into(),
                cow: "/cow".into(),
                store: Store::PO,
                chunk_size: Some(4096),
                size: Some(1 << 20),
                discard_zeroes_cow: true,
                discard_passdown_origin: false,
                resettable: true,
                preallocate: true,
            }],
            adopt: true,
        }),
        Request::SnapshotDelete(SnapshotDelete {
            name: "s".into(),
            force: false,
            remove_cow: true,
        }),
        Request::SnapshotList {},
        Request::ExportAdd(ExportAdd {
            node: "s".into(),
            socket: "/run/s.sock".into(),
            readonly: true,
            num_queues: 4,
            queue_size: Some(128),
            serial: Some("abc".into()),
            logical_block_size: Some(4096),
            writethrough: true,
            shared_writable: true,
            qos: {
                let mut q = crate::qos::QosLimits::default();
                q.set("iops_total", 5000).unwrap();
                q
            },
            qos_group: Some("tenant".into()),
        }),
        Request::ExportRemove(ExportRemove {
            socket: None,
            node: Some("s".into()),
            force: false,
        }),
        Request::ExportList {},
        Request::Status(StatusArgs { node: None }),
        Request::Stats {},
        Request::MergeStart(SnapshotRef {
            snapshot: "s".into(),
        }),
        Request::MergeStatus(MergeStatusArgs::default()),
        Request::CloneReset(SnapshotRef {
            snapshot: "s".into(),
        }),
        Request::Events(EventsArgs { since: Some(3) }),
        Request::ExportQos(crate::control::request::ExportQos {
            node: Some("s".into()),
            socket: None,
            qos: Some(Default::default()),
            qos_group: Some(String::new()),
        }),
        Request::QosGroupSet(crate::control::request::QosGroupSet {
            name: "tenant".into(),
            qos: Default::default(),
        }),
        Request::QosGroupRemove(crate::control::request::QosGroupRef {
            name: "tenant".into(),
        }),
        Request::QosGroupList {},
    ]
}

fn refused(line: &str) -> Refused {
    parse_request(line.as_bytes()).expect_err("line should be refused")
}

#[test]
fn every_request_round_trips_through_its_line() {
    let all = one_of_each();
    assert_eq!(all.len(), COMMANDS.len());
    for (i, req) in all.into_iter().enumerate() {
        let line = encode_request(i as u64, &req).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["cmd"], req.cmd());
        assert_eq!(v["v"], 1);
        assert_eq!(COMMANDS[i], req.cmd());
        let (id, back) = parse_request(&line[..line.len() - 1]).unwrap();
        assert_eq!((id, back), (i as u64, req));
    }
}

#[test]
fn an_rbd_origin_add_round_trips_with_its_ceph_settings() {
    let req = Request::OriginAdd(OriginAdd {
        name: "golden".into(),
        image: "rbd:ci/golden@base".into(),
        copy_cap: None,
        ceph_conf: Some("/etc/ceph/ci.conf".into()),
        ceph_id: Some("snapblk".into()),
        ceph_keyring: Some("/etc/ceph/ci.keyring".into()),
    });
    let line = encode_request(7, &req).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["args"]["ceph_id"], "snapblk");
    assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), (7, req));
    // A file image has no Ceph settings on the wire.
    let (_, r) =
        parse_request(br#"{"v":1,"id":1,"cmd":"origin.add","args":{"name":"o","image":"/i"}}"#)
            .unwrap();
    let Request::OriginAdd(a) = r else {
        panic!("{r:?}")
    };
    assert_eq!((a.ceph_conf, a.ceph_id, a.ceph_keyring), (None, None, None));
}

#[test]
fn args_may_be_omitted_or_null_when_all_are_optional() {
    for line in [
        r#"{"v":1,"id":1,"cmd":"snapshot.list"}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.list","args":null}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.list","args":{}}"#,
    ] {
        assert_eq!(
            parse_request(line.as_bytes()).unwrap().1,
            Request::SnapshotList {}
        );
    }
    let (_, r) = parse_request(br#"{"v":1,"id":2,"cmd":"status"}"#).unwrap();
    assert_eq!(r, Request::Status(StatusArgs { node: None }));
}

#[test]
fn defaults_fill_optional_arguments() {
    let (_, r) =
        parse_request(br#"{"v":1,"id":1,"cmd":"export.add","args":{"node":"o","socket":"/s"}}"#)
            .unwrap();
    let Request::ExportAdd(a) = r else {
        panic!("wrong variant")
    };
    assert_eq!((a.num_queues, a.readonly, a.queue_size), (1, false, None));
}

#[test]
fn malformed_json_is_bad_request_without_id() {
    let r = refused(r#"{"v":1,"id":1,"cmd":"#);
    assert_eq!((r.id, r.error.code), (None, ErrorCode::BadRequest));
    assert!(
        r.error.message.contains("malformed JSON"),
        "{}",
        r.error.message
    );
    assert_eq!(refused("[1,2]").error.code, ErrorCode::BadRequest);
    assert_eq!(refused("\u{0}\u{1}").error.code, ErrorCode::BadRequest);
}

#[test]
fn envelope_errors_have_stable_codes() {
    let cases = [
        (r#"{"v":1,"cmd":"hello"}"#, None, ErrorCode::BadRequest),
        (
            r#"{"v":1,"id":-1,"cmd":"hello"}"#,
            None,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"v":1,"id":"7","cmd":"hello"}"#,
            None,
            ErrorCode::BadRequest,
        ),
        (r#"{"id":7,"cmd":"hello"}"#, Some(7), ErrorCode::BadRequest),
        (
            r#"{"v":"1","id":7,"cmd":"hello"}"#,
            Some(7),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"v":2,"id":7,"cmd":"hello"}"#,
            Some(7),
            ErrorCode::UnsupportedVersion,
        ),
        (r#"{"v":1,"id":7}"#, Some(7), ErrorCode::BadRequest),
        (r#"{"v":1,"id":7,"cmd":3}"#, Some(7), ErrorCode::BadRequest),
        (
            r#"{"v":1,"id":7,"cmd":"reboot"}"#,
            Some(7),
            ErrorCode::UnknownCommand,
        ),
        (
            r#"{"v":1,"id":7,"cmd":"hello","x":1}"#,
            Some(7),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"v":1,"id":7,"cmd":"hello","args":[]}"#,
            Some(7),
            ErrorCode::BadRequest,
        ),
    ];
    for (line, id, code) in cases {
        let r = refused(line);
        assert_eq!(
            (r.id, r.error.code),
            (id, code),
            "{line}: {}",
            r.error.message
        );
    }
}

#[test]
fn wrong_types_missing_and_unknown_arguments_are_bad_requests() {
    for line in [
        r#"{"v":1,"id":1,"cmd":"origin.add","args":{"name":5,"image":"/i"}}"#,
        r#"{"v":1,"id":1,"cmd":"origin.add","args":{"name":"o"}}"#,
        r#"{"v":1,"id":1,"cmd":"origin.add","args":{"name":"o","image":"/i","bogus":1}}"#,
        r#"{"v":1,"id":1,"cmd":"hello","args":{"bogus":1}}"#,
        r#"{"v":1,"id":1,"cmd":"export.add","args":{"node":"o","socket":"/s","num_queues":-1}}"#,
        r#"{"v":1,"id":1,"cmd":"export.add","args":{"node":"o","socket":"/s","num_queues":70000}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":{}}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":[{"origin":"o","name":"s","cow":"/c","store":"X"}]}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.delete","args":{"name":"s","force":"yes"}}"#,
    ] {
        let r = refused(line);
        assert_eq!(
            (r.id, r.error.code),
            (Some(1), ErrorCode::BadRequest),
            "{line}"
        );
        assert!(
            r.error.message.contains("invalid arguments"),
            "{}",
            r.error.message
        );
    }
}

#[test]
fn semantic_checks_are_invalid_argument() {
    for line in [
        r#"{"v":1,"id":1,"cmd":"origin.add","args":{"name":"o","image":"rel/img"}}"#,
        r#"{"v":1,"id":1,"cmd":"origin.add","args":{"name":"","image":"/img"}}"#,
        r#"{"v":1,"id":1,"cmd":"origin.add","args":{"name":"a b","image":"/img"}}"#,
        r#"{"v":1,"id":1,"cmd":"export.add","args":{"node":"o","socket":"s.sock"}}"#,
        r#"{"v":1,"id":1,"cmd":"export.add","args":{"node":"o","socket":"/s","queue_size":100}}"#,
        r#"{"v":1,"id":1,"cmd":"export.remove","args":{}}"#,
        r#"{"v":1,"id":1,"cmd":"export.remove","args":{"node":"o","socket":"/s"}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":[]}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":[{"origin":"o","name":"s","cow":"/c","chunk_size":1000}]}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":[{"origin":"o","name":"s","cow":"/c","store":"N"}]}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":[{"origin":"o","name":"s","cow":"/c"},{"origin":"p","name":"s","cow":"/d"}]}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":[{"origin":"o","name":"s","cow":"/c"},{"origin":"p","name":"t","cow":"/c"}]}}"#,
        r#"{"v":1,"id":1,"cmd":"snapshot.create","args":{"snapshots":[{"origin":"o","name":"s","cow":"/c","discard_passdown_origin":true}]}}"#,
    ] {
        let r = refused(line);
        assert_eq!(
            (r.id, r.error.code),
            (Some(1), ErrorCode::InvalidArgument),
            "{line}: {}",
            r.error.message
        );
    }
}

#[test]
fn several_origins_in_one_create_are_accepted() {
    let line = r#"{"v":1,"id":9,"cmd":"snapshot.create","args":{"snapshots":[
        {"origin":"a","name":"a1","cow":"/c/a1","size":1048576},
        {"origin":"b","name":"b1","cow":"/c/b1","store":"PO","chunk_size":8192}]}}"#
        .replace('\n', "");
    let (_, r) = parse_request(line.as_bytes()).unwrap();
    let Request::SnapshotCreate(c) = r else {
        panic!("wrong variant")
    };
    assert_eq!(c.snapshots.len(), 2);
    assert_eq!(c.snapshots[1].store, Store::PO);
    assert_eq!(c.snapshots[0].cow, PathBuf::from("/c/a1"));
}

#[test]
fn responses_encode_as_documented() {
    let ok = encode_response(Some(3), &Ok(Response::Done(Done {})));
    assert_eq!(ok, b"{\"v\":1,\"id\":3,\"ok\":true,\"result\":{}}\n");
    let err = encode_response(
        None,
        &Err(ControlError::new(ErrorCode::LineTooLong, "too long")),
    );
    let v: serde_json::Value = serde_json::from_slice(&err).unwrap();
    assert_eq!(
        v,
        json!({"v":1,"id":null,"ok":false,"error":{"code":"line_too_long","message":"too long"}})
    );
}

#[test]
fn error_codes_serialize_as_their_stable_names() {
    use ErrorCode::*;
    for c in [
        BadRequest,
        UnknownCommand,
        UnsupportedVersion,
        LineTooLong,
        Busy,
        NotFound,
        Exists,
        InUse,
        HasSnapshots,
        Exported,
        MergeInProgress,
        InvalidArgument,
        IoError,
        Internal,
    ] {
        assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
    }
}

#[test]
fn results_decode_by_command_and_answer_the_right_request() {
    let merge = Response::Merge(MergeStatus {
        snapshot: "s".into(),
        origin: "o".into(),
        state: MergeState::Running,
        remaining_exceptions: 5,
        total_exceptions: 10,
        merged_bytes: 4096,
        elapsed_s: 1.5,
    });
    let start = Request::MergeStart(SnapshotRef {
        snapshot: "s".into(),
    });
    let v = serde_json::to_value(&merge).unwrap();
    assert_eq!(Response::decode("merge.start", v.clone()).unwrap(), merge);
    assert!(merge.answers(&start));
    assert!(!merge.answers(&Request::Stats {}));
    assert!(Response::decode("stats", v).is_err());
    assert!(Response::decode("nope", json!({})).is_err());
}

/// Every request example in docs/control-protocol.md parses, every command has one, and every
/// response example decodes as the answer to the request before it.
#[test]
fn documented_examples_parse() {
    let doc = include_str!("../../docs/control-protocol.md");
    let mut last: Option<Result<Request, ControlError>> = None;
    let mut documented = std::collections::HashSet::new();
    for line in doc.lines() {
        if let Some(req) = line.strip_prefix("→ ") {
            let parsed = parse_request(req.as_bytes()).map(|(_, r)| r);
            if let Ok(r) = &parsed {
                documented.insert(r.cmd());
            }
            last = Some(parsed.map_err(|r| r.error));
        } else if let Some(resp) = line.strip_prefix("← ") {
            let reply: ResponseLine = serde_json::from_str(resp).expect(resp);
            match (reply.result, reply.error, &last) {
                (Some(result), None, Some(Ok(req))) => {
                    let r = Response::decode(req.cmd(), result).expect(resp);
                    assert!(r.answers(req), "{resp}");
                }
                // A refusal by the daemon's state (not reproducible here).
                (None, Some(_), Some(Ok(_))) => {}
                (None, Some(e), Some(Err(refused))) => assert_eq!(&e, refused),
                _ => panic!("response without a matching request: {resp}"),
            }
        }
    }
    for cmd in COMMANDS {
        assert!(documented.contains(cmd), "no example for {cmd}");
    }
}

/// Fields added to a result after version 1 shipped default when an older daemon leaves them out.
#[test]
fn stats_from_a_daemon_without_in_flight_and_connected_still_decode() {
    let old = json!({
        "exports": [{"socket": "/run/a.sock", "node": "a", "requests": 3, "read_bytes": 512,
                     "write_bytes": 0, "errors": 0}],
        "snapshots": []
    });
    let Response::Stats(s) = Response::decode("stats", old).unwrap() else {
        panic!("not stats")
    };
    assert_eq!((s.exports[0].in_flight, s.exports[0].connected), (0, false));
}
