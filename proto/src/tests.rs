use crate::*;

fn exec_frame(buf: &mut [u8]) -> usize {
    let argv: [&[u8]; 2] = [b"echo", b"hi"];
    let env: [(&[u8], &[u8]); 1] = [(b"K", b"V")];
    encode_frame(buf, Kind::Exec, 0, |w| {
        Exec::encode(
            w,
            ExecParts {
                clock_ns: 7,
                seed: [9; 32],
                timeout_ms: 100,
                program: Program::Argv,
                argv: argv.iter().copied(),
                env: env.iter().copied(),
                cwd: b"/tmp",
                stdin: b"in",
            },
        )
    })
    .unwrap()
}

#[test]
fn exec_round_trips() {
    let mut buf = [0u8; 512];
    let n = exec_frame(&mut buf);
    let (h, payload) = decode_frame(&buf[..n]).unwrap();
    assert_eq!(h.kind, Kind::Exec);
    let e = Exec::decode(payload).unwrap();
    assert_eq!(e.clock_ns, 7);
    assert_eq!(e.seed, [9; 32]);
    assert_eq!(e.timeout_ms, 100);
    let argv: [&[u8]; 2] = [b"echo", b"hi"];
    assert!(e.argv.iter().eq(argv.iter().copied()));
    let pairs: [(&[u8], &[u8]); 1] = [(b"K", b"V")];
    assert!(e.env_pairs().eq(pairs.iter().copied()));
    assert_eq!(e.cwd, b"/tmp");
    assert_eq!(e.stdin, b"in");
}

#[test]
fn every_truncation_of_an_exec_is_rejected() {
    let mut buf = [0u8; 512];
    let n = exec_frame(&mut buf);
    for cut in HEADER_LEN..n {
        let payload = &buf[HEADER_LEN..cut];
        assert!(Exec::decode(payload).is_err(), "cut at {cut} decoded");
    }
}

#[test]
fn header_rejects_bad_magic_kind_and_length() {
    let good = Header {
        kind: Kind::Output,
        len: 3,
        flags: 0,
    }
    .encode();
    assert!(Header::decode(&good).is_ok());
    let mut bad = good;
    bad[0] ^= 1;
    assert_eq!(Header::decode(&bad), Err(WireError::BadMagic));
    let mut bad = good;
    bad[4] = 0x7f;
    assert_eq!(Header::decode(&bad), Err(WireError::UnknownKind(0x7f)));
    let mut bad = good;
    bad[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    assert!(matches!(Header::decode(&bad), Err(WireError::TooLong(_))));
    assert_eq!(Header::decode(&good[..10]), Err(WireError::Truncated));
}

#[test]
fn frame_longer_than_buffer_is_truncated() {
    let mut buf = [0u8; 64];
    let n = encode_frame(&mut buf, Kind::Output, 0, |w| {
        Output {
            stream: Stream::Stdout,
            data: b"hello",
        }
        .encode(w)
    })
    .unwrap();
    assert_eq!(
        decode_frame(&buf[..n - 1]).err(),
        Some(WireError::Truncated)
    );
    let (_, p) = decode_frame(&buf[..n]).unwrap();
    assert_eq!(Output::decode(p).unwrap().data, b"hello");
}

#[test]
fn huge_list_count_does_not_overflow() {
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf);
    w.u32(u32::MAX).unwrap();
    let n = w.position();
    let mut r = Reader::new(&buf[..n]);
    assert!(StrList::decode(&mut r, 2).is_err());
}

#[test]
fn writer_refuses_to_overflow() {
    let mut buf = [0u8; 4];
    let mut w = Writer::new(&mut buf);
    assert_eq!(w.bytes(b"x"), Err(WireError::Truncated));
}

#[test]
fn small_payloads_round_trip() {
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf);
    ExitStatus {
        code: -3,
        signal: 9,
        flags: EXIT_TIMED_OUT,
    }
    .encode(&mut w)
    .unwrap();
    let n = w.position();
    assert_eq!(
        ExitStatus::decode(&buf[..n]).unwrap(),
        (
            ExitStatus {
                code: -3,
                signal: 9,
                flags: EXIT_TIMED_OUT
            },
            None
        )
    );
    let mut w = Writer::new(&mut buf);
    Ready {
        version: VERSION,
        agent: AgentKind::Linux,
    }
    .encode(&mut w)
    .unwrap();
    let n = w.position();
    assert_eq!(Ready::decode(&buf[..n]).unwrap().agent, AgentKind::Linux);
}

#[test]
fn page_list_validates() {
    let mut pages = [0u64; MAILBOX_MAX_PAGES];
    pages[0] = 0x1000;
    pages[1] = 0x5000;
    let list = PageList { count: 2, pages };
    let mut page = [0u8; PAGE_SIZE];
    list.encode(&mut page).unwrap();
    assert_eq!(PageList::decode(&page).unwrap(), list);
    assert_eq!(list.capacity(), 2 * PAGE_SIZE);
    let mut bad = page;
    bad[8] = 1; // first gpa no longer aligned
    assert_eq!(PageList::decode(&bad), Err(WireError::BadValue));
    let mut bad = page;
    bad[4] = 17;
    assert_eq!(PageList::decode(&bad), Err(WireError::BadValue));
    let mut bad = page;
    bad[0] = 0;
    assert_eq!(PageList::decode(&bad), Err(WireError::BadMagic));
}

#[test]
fn exit_can_carry_the_last_output_chunk() {
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf);
    let status = ExitStatus {
        code: 0,
        signal: 0,
        flags: 0,
    };
    let tail = Output {
        stream: Stream::Stderr,
        data: b"bye\n",
    };
    status.encode_with_output(&mut w, &tail).unwrap();
    let n = w.position();
    assert_eq!(n, ExitStatus::OUTPUT_TAIL_OFFSET + 4);
    assert_eq!(ExitStatus::decode(&buf[..n]).unwrap(), (status, Some(tail)));
    for cut in 13..n {
        assert!(ExitStatus::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn file_chunks_round_trip_and_reject_truncation() {
    let mut buf = [0u8; 128];
    let chunk = WriteFile {
        path: b"/tmp/f",
        mode: 0o640,
        data: b"abc",
        offset: 1 << 40,
    };
    let mut w = Writer::new(&mut buf);
    chunk.encode(&mut w).unwrap();
    let n = w.position();
    assert_eq!(n, WriteFile::OVERHEAD + 6 + 3);
    assert_eq!(WriteFile::decode(&buf[..n]).unwrap(), chunk);
    // Cutting the offset in half is an error, not a version-1 payload.
    for cut in (n - 7)..n {
        assert!(WriteFile::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    let read = ReadFile {
        path: b"/tmp/f",
        max_bytes: 99,
        offset: 7,
        length: Some(5),
    };
    let mut w = Writer::new(&mut buf);
    read.encode(&mut w).unwrap();
    let n = w.position();
    assert_eq!(ReadFile::decode(&buf[..n]).unwrap(), read);
    for cut in (n - 11)..n {
        assert!(ReadFile::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn version_1_file_payloads_still_decode() {
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf);
    w.bytes(b"/f").unwrap();
    w.u32(0o600).unwrap();
    w.bytes(b"hi").unwrap();
    let n = w.position();
    let old = WriteFile::decode(&buf[..n]).unwrap();
    assert_eq!((old.data, old.offset), (&b"hi"[..], 0));

    let whole = ReadFile {
        path: b"/f",
        max_bytes: 10,
        offset: 0,
        length: None,
    };
    let mut w = Writer::new(&mut buf);
    whole.encode(&mut w).unwrap();
    assert_eq!(w.position(), 4 + 2 + 4, "only version-1 fields");
    assert_eq!(ReadFile::decode(&buf[..10]).unwrap(), whole);
    let mut w = Writer::new(&mut buf);
    let bad = ReadFile { offset: 1, ..whole };
    assert_eq!(bad.encode(&mut w), Err(WireError::BadValue));
}

fn run_code_frame(buf: &mut [u8]) -> usize {
    let env: [(&[u8], &[u8]); 1] = [(b"K", b"V")];
    encode_frame(buf, Kind::RunCode, 0, |w| {
        RunCode::encode(
            w,
            RunCodeParts {
                clock_ns: 7,
                seed: [9; 32],
                timeout_ms: 100,
                language: Language::JavaScript,
                vm_id: 0xfeed,
                context: b"nb",
                code: b"1+1",
                env: env.iter().copied(),
                cwd: b"/tmp",
            },
        )
    })
    .unwrap()
}

#[test]
fn run_code_round_trips_and_every_truncation_is_rejected() {
    let mut buf = [0u8; 512];
    let n = run_code_frame(&mut buf);
    let (h, payload) = decode_frame(&buf[..n]).unwrap();
    assert_eq!(h.kind, Kind::RunCode);
    let r = RunCode::decode(payload).unwrap();
    assert_eq!(
        (r.clock_ns, r.seed, r.timeout_ms, r.language, r.vm_id),
        (7, [9; 32], 100, Language::JavaScript, 0xfeed)
    );
    assert_eq!(
        (r.context, r.code, r.cwd),
        (&b"nb"[..], &b"1+1"[..], &b"/tmp"[..])
    );
    let pairs: [(&[u8], &[u8]); 1] = [(b"K", b"V")];
    assert!(r.env_pairs().eq(pairs.iter().copied()));
    for cut in HEADER_LEN..n {
        assert!(
            RunCode::decode(&buf[HEADER_LEN..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn run_code_rejects_unknown_languages_and_long_context_names() {
    let mut buf = [0u8; 512];
    let n = run_code_frame(&mut buf);
    let mut bad = buf[HEADER_LEN..n].to_vec();
    bad[44..48].copy_from_slice(&3u32.to_le_bytes()); // language
    assert_eq!(RunCode::decode(&bad).err(), Some(WireError::BadValue));
    let name = [b'x'; MAX_CONTEXT_NAME + 1];
    let n = encode_frame(&mut buf, Kind::RunCode, 0, |w| {
        RunCode::encode(
            w,
            RunCodeParts {
                clock_ns: 0,
                seed: [0; 32],
                timeout_ms: 0,
                language: Language::Python,
                vm_id: 0,
                context: &name,
                code: b"",
                env: core::iter::empty(),
                cwd: b"",
            },
        )
    })
    .unwrap();
    assert_eq!(
        RunCode::decode(&buf[HEADER_LEN..n]).err(),
        Some(WireError::BadValue)
    );
}

#[test]
fn code_end_round_trips_with_and_without_parts_and_tail() {
    let status = ExitStatus {
        code: 1,
        signal: 0,
        flags: EXIT_TIMED_OUT,
    };
    let error = CodeError {
        name: b"ValueError",
        value: b"boom",
        traceback: b"Traceback...",
    };
    let ends = [
        CodeEnd {
            status,
            result: None,
            error: None,
        },
        CodeEnd {
            status,
            result: Some(b"2"),
            error: None,
        },
        CodeEnd {
            status,
            result: Some(b""),
            error: Some(error),
        },
    ];
    let tail = Output {
        stream: Stream::Stderr,
        data: b"late",
    };
    for end in ends {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf);
        end.encode(&mut w).unwrap();
        let n = w.position();
        assert_eq!(n, end.encoded_len());
        assert_eq!(CodeEnd::decode(&buf[..n]).unwrap(), (end, None));
        let mut w = Writer::new(&mut buf);
        end.encode_with_output(&mut w, &tail).unwrap();
        let n = w.position();
        assert_eq!(CodeEnd::decode(&buf[..n]).unwrap(), (end, Some(tail)));
        for cut in 0..n {
            // A cut right after the end's own fields is a valid end without a tail.
            if cut != end.encoded_len() {
                assert!(CodeEnd::decode(&buf[..cut]).is_err(), "cut at {cut}");
            }
        }
    }
}

#[test]
fn code_end_rejects_unknown_parts() {
    let mut buf = [0u8; 16];
    buf[12..16].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(CodeEnd::decode(&buf).err(), Some(WireError::BadValue));
}

#[test]
fn context_lists_round_trip_and_reject_bad_entries() {
    let entries = [
        ContextEntry {
            name: b"a",
            language: Language::Python,
        },
        ContextEntry {
            name: b"notebook",
            language: Language::Bash,
        },
    ];
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf);
    ContextList::encode(&mut w, entries.iter().copied()).unwrap();
    let n = w.position();
    let list = ContextList::decode(&buf[..n]).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().eq(entries.iter().copied()));
    for cut in 0..n {
        assert!(ContextList::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = buf;
    bad[n - 4..n].copy_from_slice(&9u32.to_le_bytes());
    assert!(ContextList::decode(&bad[..n]).is_err());
    assert!(ContextList::decode(&[0, 0, 0, 0]).unwrap().is_empty());
}

#[test]
fn net_up_round_trips_and_rejects_bad_values() {
    let up = NetUp {
        link: NetLink::VirtioMmio,
        mac: [2, 0x5a, 0x42, 0, 0, 2],
        addr: [192, 0, 2, 2],
        prefix_len: 24,
        gateway: [192, 0, 2, 1],
        dns: [192, 0, 2, 1],
        mtu: 1500,
    };
    let mut buf = [0u8; 64];
    let mut w = Writer::new(&mut buf);
    up.encode(&mut w).unwrap();
    let n = w.position();
    assert_eq!(NetUp::decode(&buf[..n]).unwrap(), up);
    for cut in 0..n {
        assert!(NetUp::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    for bad in [
        NetUp {
            prefix_len: 33,
            ..up
        },
        NetUp { mtu: 67, ..up },
        NetUp { mtu: 65536, ..up },
    ] {
        let mut w = Writer::new(&mut buf);
        bad.encode(&mut w).unwrap();
        let n = w.position();
        assert_eq!(NetUp::decode(&buf[..n]), Err(WireError::BadValue));
    }
    buf[0] = 9;
    assert_eq!(NetUp::decode(&buf[..n]), Err(WireError::BadValue));
}

#[test]
fn module_dependencies_come_from_modinfo() {
    let ko = b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio\0intree=Y\0";
    let deps: [&[u8]; 2] = [b"virtio_ring", b"virtio"];
    assert!(module_depends(ko).eq(deps));
    assert_eq!(module_depends(b"\0depends=\0x").count(), 0);
    assert_eq!(module_depends(b"no modinfo at all").count(), 0);
    let mut one = module_depends(b"\0depends=a");
    assert_eq!((one.next(), one.next()), (Some(&b"a"[..]), None));
}
