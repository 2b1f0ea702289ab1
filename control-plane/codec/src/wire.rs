//! Protobuf wire-format primitives.

pub(crate) const VARINT: u8 = 0;
pub(crate) const FIXED64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const FIXED32: u8 = 5;

/// A field value as read off the wire.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the `(field number, value)` pairs of one message.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.buf.get(self.pos..end).ok_or("truncated field")?;
        self.pos = end;
        Ok(s)
    }

    /// The next field, or `None` at the end of the message.
    #[allow(clippy::should_implement_trait)]
    pub(crate) fn next(&mut self) -> Result<Option<(u32, Raw<'a>)>, &'static str> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        if number == 0 {
            return Err("field number 0");
        }
        let raw = match (key & 7) as u8 {
            VARINT => Raw::Varint(self.varint()?),
            FIXED64 => Raw::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                Raw::Len(self.take(n)?)
            }
            FIXED32 => Raw::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            // Groups (3, 4) are not used by Kubernetes; anything else is corrupt.
            _ => return Err("unsupported wire type"),
        };
        Ok(Some((number, raw)))
    }
}

/// Reads one varint from a packed buffer, returning it and the rest.
pub(crate) fn packed_varint(buf: &[u8]) -> Result<(u64, &[u8]), &'static str> {
    let mut r = Reader::new(buf);
    let v = r.varint()?;
    Ok((v, &buf[r.pos..]))
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_key(out: &mut Vec<u8>, number: u32, wire: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire));
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, number: u32, b: &[u8]) {
    put_key(out, number, LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes a length-delimited field whose content `f` appends to `out`, without a temporary buffer
/// per level: the content is written first, then moved right by the size of its length prefix.
pub(crate) fn put_nested<E>(
    out: &mut Vec<u8>,
    number: u32,
    f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    put_key(out, number, LEN);
    let start = out.len();
    f(out)?;
    let len = out.len() - start;
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    n += 1;
    out.splice(start..start, prefix[..n].iter().copied());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX,
            (-1i64) as u64,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(packed_varint(&b).unwrap(), (v, &[][..]));
        }
    }

    #[test]
    fn nested_prefix() {
        let mut out = Vec::new();
        put_nested::<()>(&mut out, 1, |o| {
            o.extend(std::iter::repeat_n(7u8, 200));
            Ok(())
        })
        .unwrap();
        let mut r = Reader::new(&out);
        match r.next().unwrap() {
            Some((1, Raw::Len(b))) => assert_eq!(b.len(), 200),
            other => panic!("{other:?}"),
        }
        assert!(r.next().unwrap().is_none());
    }
}
