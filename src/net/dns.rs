//! The DNS messages the host side answers for its guest: one question in,
//! one answer out, A records only. The guest's resolver asks the gateway, so
//! a name the policy does not allow never reaches the host's resolver and
//! comes back as NXDOMAIN (RFC 1035 wire format, no EDNS, no compression in
//! questions; everything a guest sends is hostile, so parsing is bounded and
//! never panics).

use std::net::Ipv4Addr;

/// Header length.
const HEADER: usize = 12;
/// Question type A.
pub const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// Most addresses put in one answer (keeps every answer under 512 bytes).
pub const MAX_ANSWERS: usize = 8;
/// Largest answer [`answer`] writes: header, the longest question (a
/// 255-byte name is 257 bytes on the wire, then type and class), the answers.
pub const MAX_ANSWER_LEN: usize = HEADER + 257 + 4 + MAX_ANSWERS * 16;

/// Response codes the host side sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    /// Answered (possibly with no addresses).
    NoError = 0,
    /// The query could not be parsed.
    FormErr = 1,
    /// The host's resolver failed.
    ServFail = 2,
    /// The name does not exist, or the policy does not allow it.
    NxDomain = 3,
    /// Not a standard query of class IN.
    NotImp = 4,
}

/// A parsed query.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    /// The query id, echoed in the answer.
    pub id: u16,
    /// Recursion desired, echoed.
    rd: bool,
    /// The name asked, lowercase, without the trailing dot.
    pub name: String,
    /// The question type.
    pub qtype: u16,
    /// The question as sent (name, type, class), echoed in the answer.
    question: Vec<u8>,
}

/// Why a message could not be answered normally.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not even a header, or a response rather than a query: drop it.
    Drop,
    /// A header with an id, but a question we refuse: answer this code.
    Answer {
        /// The query id.
        id: u16,
        /// The code to send.
        rcode: Rcode,
    },
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Parses a query from a guest.
pub fn parse_query(msg: &[u8]) -> Result<Query, Bad> {
    let (Some(id), Some(flags), Some(qdcount)) = (u16_at(msg, 0), u16_at(msg, 2), u16_at(msg, 4))
    else {
        return Err(Bad::Drop);
    };
    if msg.len() < HEADER || flags & 0x8000 != 0 {
        return Err(Bad::Drop);
    }
    let fail = |rcode| Bad::Answer { id, rcode };
    if (flags >> 11) & 0xf != 0 {
        return Err(fail(Rcode::NotImp));
    }
    if qdcount != 1 {
        return Err(fail(Rcode::FormErr));
    }
    let mut at = HEADER;
    let mut name = String::new();
    loop {
        let len = *msg.get(at).ok_or(fail(Rcode::FormErr))? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        // 0x40 and 0x80 are reserved label types, 0xc0 a compression pointer:
        // neither belongs in a question.
        if len > 63 || name.len() + len + 1 > 255 {
            return Err(fail(Rcode::FormErr));
        }
        let label = msg.get(at..at + len).ok_or(fail(Rcode::FormErr))?;
        if !name.is_empty() {
            name.push('.');
        }
        // Bytes outside ASCII become '?', which no valid name contains.
        name.extend(label.iter().map(|&b| {
            if b.is_ascii() {
                b.to_ascii_lowercase() as char
            } else {
                '?'
            }
        }));
        at += len;
    }
    let (Some(qtype), Some(qclass)) = (u16_at(msg, at), u16_at(msg, at + 2)) else {
        return Err(fail(Rcode::FormErr));
    };
    if qclass != CLASS_IN {
        return Err(fail(Rcode::NotImp));
    }
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        name,
        qtype,
        question: msg[HEADER..at + 4].to_vec(),
    })
}

/// Writes the answer to `q` into `buf` (at least [`MAX_ANSWER_LEN`] bytes):
/// `rcode` and, when it is [`Rcode::NoError`], up to [`MAX_ANSWERS`] A
/// records of `addrs` with `ttl` seconds. Returns its length.
pub fn answer(buf: &mut [u8], q: &Query, rcode: Rcode, addrs: &[Ipv4Addr], ttl: u32) -> usize {
    let addrs = match rcode {
        Rcode::NoError => &addrs[..addrs.len().min(MAX_ANSWERS)],
        _ => &[],
    };
    let mut w = Cursor { buf, at: 0 };
    header(&mut w, q.id, q.rd, rcode, 1, addrs.len() as u16);
    w.put(&q.question);
    for a in addrs {
        w.put(&0xc00cu16.to_be_bytes()); // the name: a pointer to the question's
        w.put(&TYPE_A.to_be_bytes());
        w.put(&CLASS_IN.to_be_bytes());
        w.put(&ttl.to_be_bytes());
        w.put(&4u16.to_be_bytes());
        w.put(&a.octets());
    }
    w.at
}

/// Writes a question-less answer carrying only `rcode` (for queries that
/// could not be parsed past their header).
pub fn error_answer(buf: &mut [u8], id: u16, rcode: Rcode) -> usize {
    let mut w = Cursor { buf, at: 0 };
    header(&mut w, id, false, rcode, 0, 0);
    w.at
}

fn header(w: &mut Cursor<'_>, id: u16, rd: bool, rcode: Rcode, qd: u16, an: u16) {
    // QR, recursion available, the code; recursion desired as asked.
    let flags = 0x8000 | 0x0080 | u16::from(rd) << 8 | rcode as u16;
    for v in [id, flags, qd, an, 0, 0] {
        w.put(&v.to_be_bytes());
    }
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A query as a stub resolver sends it.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [id, 0x0100, 1, 0, 0, 0] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    /// (id, rcode, addresses) of an answer.
    pub(crate) fn read_answer(m: &[u8]) -> (u16, u16, Vec<Ipv4Addr>) {
        let id = u16_at(m, 0).unwrap();
        let flags = u16_at(m, 2).unwrap();
        assert_ne!(flags & 0x8000, 0, "a response");
        let (qd, an) = (u16_at(m, 4).unwrap(), u16_at(m, 6).unwrap());
        let mut at = HEADER;
        if qd == 1 {
            while m[at] != 0 {
                at += 1 + m[at] as usize;
            }
            at += 5;
        }
        let mut addrs = Vec::new();
        for _ in 0..an {
            assert_eq!(u16_at(m, at).unwrap(), 0xc00c);
            assert_eq!(u16_at(m, at + 2).unwrap(), TYPE_A);
            assert_eq!(u16_at(m, at + 10).unwrap(), 4);
            addrs.push(Ipv4Addr::new(
                m[at + 12],
                m[at + 13],
                m[at + 14],
                m[at + 15],
            ));
            at += 16;
        }
        assert_eq!(at, m.len());
        (id, flags & 0xf, addrs)
    }

    #[test]
    fn a_query_parses_and_its_answer_echoes_the_question() {
        let msg = query(0x1234, "Pypi.ORG", TYPE_A);
        let q = parse_query(&msg).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype, q.rd),
            (0x1234, "pypi.org", TYPE_A, true)
        );
        let mut buf = [0u8; MAX_ANSWER_LEN];
        let addrs: Vec<_> = (1..=10).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        let n = answer(&mut buf, &q, Rcode::NoError, &addrs, 60);
        // The question comes back byte for byte, case included.
        assert_eq!(&buf[HEADER..msg.len()], &msg[HEADER..]);
        let (id, rcode, got) = read_answer(&buf[..n]);
        assert_eq!((id, rcode), (0x1234, 0));
        assert_eq!(got, addrs[..MAX_ANSWERS]);
        let n = answer(&mut buf, &q, Rcode::NxDomain, &addrs, 60);
        assert_eq!(read_answer(&buf[..n]), (0x1234, 3, vec![]));
    }

    #[test]
    fn hostile_queries_are_dropped_or_answered_with_an_error() {
        assert_eq!(parse_query(&[]), Err(Bad::Drop));
        assert_eq!(parse_query(&[0; 11]), Err(Bad::Drop));
        let mut response = query(7, "a.b", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(Bad::Drop));
        let formerr = Err(Bad::Answer {
            id: 7,
            rcode: Rcode::FormErr,
        });
        let mut two = query(7, "a.b", TYPE_A);
        two[5] = 2;
        assert_eq!(parse_query(&two), formerr);
        let mut pointer = query(7, "a.b", TYPE_A);
        pointer[HEADER] = 0xc0;
        assert_eq!(parse_query(&pointer), formerr);
        let long_label = query(7, &"x".repeat(64), TYPE_A);
        assert_eq!(parse_query(&long_label), formerr);
        let long_name = query(7, &["abcdefghi"; 26].join("."), TYPE_A);
        assert_eq!(parse_query(&long_name), formerr);
        let truncated = query(7, "a.b", TYPE_A);
        assert_eq!(parse_query(&truncated[..truncated.len() - 1]), formerr);
        let mut chaos = query(7, "a.b", TYPE_A);
        let last = chaos.len() - 1;
        chaos[last] = 3;
        assert_eq!(
            parse_query(&chaos),
            Err(Bad::Answer {
                id: 7,
                rcode: Rcode::NotImp
            })
        );
        let mut buf = [0u8; MAX_ANSWER_LEN];
        let n = error_answer(&mut buf, 7, Rcode::FormErr);
        assert_eq!(read_answer(&buf[..n]), (7, 1, vec![]));
    }

    #[test]
    fn non_ascii_names_cannot_pass_as_valid_names() {
        let mut msg = query(1, "ab.c", TYPE_A);
        msg[HEADER + 1] = 0xe9;
        let q = parse_query(&msg).unwrap();
        assert!(crate::net::policy::valid_name(&q.name).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(msg in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(q) = parse_query(&msg) {
                let mut buf = [0u8; MAX_ANSWER_LEN];
                let n = answer(&mut buf, &q, Rcode::NoError, &[Ipv4Addr::LOCALHOST; 9], 1);
                prop_assert!(n <= 512);
            }
        }
    }
}
