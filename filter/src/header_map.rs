//! The proxy-wasm serialized header map, read as bytes.
//!
//! Envoy hands a request's headers to the VM as one buffer: a little-endian u32 count, then a
//! (name size, value size) pair of u32 per header, then every name and value each followed by a
//! NUL. Header values are bytes, not text (HTTP allows obs-text, and Envoy passes `caf\xE9`
//! through), so nothing here assumes UTF-8; and the buffer comes from outside the VM, so nothing
//! here trusts its sizes. A buffer that does not add up yields the pairs that do, then stops: the
//! gate then sees fewer headers, never a trap.

/// The headers in one serialized map, borrowed from its buffer.
pub struct HeaderMap<'a> {
    sizes: &'a [u8],
    data: &'a [u8],
}

fn read_u32(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (word, rest) = bytes.split_first_chunk::<4>()?;
    Some((usize::try_from(u32::from_le_bytes(*word)).ok()?, rest))
}

impl<'a> HeaderMap<'a> {
    pub fn parse(buffer: &'a [u8]) -> HeaderMap<'a> {
        let empty = HeaderMap {
            sizes: &[],
            data: &[],
        };
        let Some((count, rest)) = read_u32(buffer) else {
            return empty;
        };
        let Some(table_len) = count.checked_mul(8).filter(|len| *len <= rest.len()) else {
            return empty;
        };
        let (sizes, data) = rest.split_at(table_len);
        HeaderMap { sizes, data }
    }

    /// Every (name, value) pair, in order.
    pub fn iter(&self) -> Pairs<'a> {
        Pairs {
            sizes: self.sizes,
            data: self.data,
        }
    }

    /// The first value of `name` (names are lowercase in Envoy's maps).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }
}

pub struct Pairs<'a> {
    sizes: &'a [u8],
    data: &'a [u8],
}

/// Takes `len` bytes and the NUL after them off the front of `data`.
fn take(data: &[u8], len: usize) -> Option<(&[u8], &[u8])> {
    let (field, rest) = data.split_at_checked(len)?;
    let (_nul, rest) = rest.split_first()?;
    Some((field, rest))
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (name_len, sizes) = read_u32(self.sizes)?;
        let (value_len, sizes) = read_u32(sizes)?;
        let Some((name, rest)) = take(self.data, name_len) else {
            self.sizes = &[];
            return None;
        };
        let Some((value, rest)) = take(rest, value_len) else {
            self.sizes = &[];
            return None;
        };
        self.sizes = sizes;
        self.data = rest;
        Some((name, value))
    }
}

/// Serializes pairs the way Envoy does (tests and fuzzing build host buffers with it).
pub fn serialize<'p>(pairs: impl IntoIterator<Item = (&'p [u8], &'p [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().into_iter().count();
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
    for (name, value) in pairs.clone() {
        out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn reads_back_what_envoy_serializes_bytes_included() {
        let pairs: [(&[u8], &[u8]); 3] = [
            (b":path", b"/metrics"),
            (b"user-agent", b"caf\xE9"),
            (b"x-empty", b""),
        ];
        let buffer = serialize(pairs);
        let map = HeaderMap::parse(&buffer);
        assert_eq!(map.iter().collect::<Vec<_>>(), pairs.to_vec());
        assert_eq!(map.get("user-agent"), Some(&b"caf\xE9"[..]));
        assert_eq!(map.get("authorization"), None);
    }

    #[test]
    fn a_buffer_that_does_not_add_up_yields_what_does_and_stops() {
        let buffer = serialize([(&b"a"[..], &b"1"[..]), (b"b", b"2")]);
        for cut in 0..buffer.len() {
            let map = HeaderMap::parse(buffer.get(..cut).unwrap_or_default());
            assert!(map.iter().count() <= 2);
        }
        // A count far beyond the buffer, and sizes far beyond the data.
        assert_eq!(
            HeaderMap::parse(&[0xff, 0xff, 0xff, 0xff]).iter().count(),
            0
        );
        let mut lying = serialize([(&b"a"[..], &b"1"[..])]);
        if let Some(size) = lying.get_mut(4) {
            *size = 200;
        }
        assert_eq!(HeaderMap::parse(&lying).iter().count(), 0);
    }
}
