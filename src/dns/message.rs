//! The little of a DNS message the forwarder reads: the 12-byte header
//! (ID, flags) and, to answer SERVFAIL, the end of the question. Everything
//! else is forwarded byte for byte.

pub const HEADER_LEN: usize = 12;
const QR: u16 = 0x8000;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;
const RCODE_SERVFAIL: u16 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
}

impl Header {
    pub fn parse(msg: &[u8]) -> Option<Header> {
        let h = msg.get(..HEADER_LEN)?;
        Some(Header {
            id: u16::from_be_bytes([h[0], h[1]]),
            flags: u16::from_be_bytes([h[2], h[3]]),
            qdcount: u16::from_be_bytes([h[4], h[5]]),
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & QR != 0
    }

    pub fn is_truncated(&self) -> bool {
        self.flags & TC != 0
    }

    pub fn rcode(&self) -> u16 {
        self.flags & 0x000f
    }
}

/// True when `answer` answers `query`: a response with the query's ID.
pub fn answers(query: &Header, answer: &[u8]) -> bool {
    Header::parse(answer).is_some_and(|a| a.is_response() && a.id == query.id)
}

/// A SERVFAIL answer to `query`: its ID, opcode and RD echoed, its question
/// copied when there is exactly one and it parses, else no question.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let h = Header::parse(query)?;
    let question = if h.qdcount == 1 {
        question_end(query).map(|end| &query[HEADER_LEN..end])
    } else {
        None
    };
    let flags = QR | (h.flags & (OPCODE_MASK | RD)) | RA | RCODE_SERVFAIL;
    let mut out = Vec::with_capacity(HEADER_LEN + question.map_or(0, <[u8]>::len));
    out.extend(h.id.to_be_bytes());
    out.extend(flags.to_be_bytes());
    out.extend(u16::from(question.is_some()).to_be_bytes());
    out.extend([0; 6]); // no answer, authority or additional records
    if let Some(q) = question {
        out.extend(q);
    }
    Some(out)
}

/// Where the first question ends: its name (labels, or a compression
/// pointer), then type and class.
fn question_end(msg: &[u8]) -> Option<usize> {
    let mut at = HEADER_LEN;
    loop {
        let len = *msg.get(at)? as usize;
        match len {
            0 => {
                at += 1;
                break;
            }
            l if l & 0xC0 == 0xC0 => {
                at += 2;
                break;
            }
            l if l <= 63 => at += 1 + l,
            _ => return None,
        }
    }
    let end = at + 4;
    (end <= msg.len()).then_some(end)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query for `name` of `qtype`, RD set, id `id`.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend(id.to_be_bytes());
        q.extend(RD.to_be_bytes());
        q.extend([0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend(label.as_bytes());
        }
        q.push(0);
        q.extend(qtype.to_be_bytes());
        q.extend(1u16.to_be_bytes());
        q
    }

    #[test]
    fn header_fields() {
        let q = query(0xbeef, "a.test", 1);
        let h = Header::parse(&q).unwrap();
        assert_eq!((h.id, h.qdcount), (0xbeef, 1));
        assert!(!h.is_response() && !h.is_truncated());
        assert!(Header::parse(&q[..11]).is_none());
    }

    #[test]
    fn servfail_echoes_id_and_question() {
        let q = query(7, "web.default.svc.cluster.local", 28);
        let a = servfail(&q).unwrap();
        let h = Header::parse(&a).unwrap();
        assert!(h.is_response());
        assert_eq!((h.id, h.rcode(), h.qdcount), (7, 2, 1));
        assert_eq!(&a[HEADER_LEN..], &q[HEADER_LEN..]);
        assert!(answers(&Header::parse(&q).unwrap(), &a));
    }

    #[test]
    fn servfail_without_a_parseable_question() {
        let mut q = query(9, "a.test", 1);
        q.truncate(15);
        let a = servfail(&q).unwrap();
        assert_eq!(a.len(), HEADER_LEN);
        assert_eq!(Header::parse(&a).unwrap().qdcount, 0);
        let mut bad_label = query(9, "a.test", 1);
        bad_label[HEADER_LEN] = 0x80;
        assert_eq!(servfail(&bad_label).unwrap().len(), HEADER_LEN);
        assert!(servfail(&[1, 2, 3]).is_none());
    }

    #[test]
    fn answers_needs_the_id_and_the_qr_bit() {
        let q = Header::parse(&query(1, "a.test", 1)).unwrap();
        let mut a = servfail(&query(1, "a.test", 1)).unwrap();
        assert!(answers(&q, &a));
        a[1] = 2;
        assert!(!answers(&q, &a), "other id");
        assert!(!answers(&q, &query(1, "a.test", 1)), "a query is no answer");
    }
}
