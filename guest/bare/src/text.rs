//! Number formatting and parsing without `core::fmt` (which would bloat the image).

/// Formats `v` in decimal into `buf`, returning the digits.
pub fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// Formats `v` as `0x` and 16 hex digits.
pub fn hex64(v: u64) -> [u8; 18] {
    let mut out = [b'0'; 18];
    out[1] = b'x';
    for i in 0..16 {
        out[17 - i] = hex_digit((v >> (i * 4)) as u8 & 0xf);
    }
    out
}

/// One lowercase hex digit.
pub fn hex_digit(n: u8) -> u8 {
    b"0123456789abcdef"[(n & 0xf) as usize]
}

/// Parses a decimal (optionally negative) or `0x` hex number.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let v = parse_u64(digits)? as i64;
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Parses a decimal or `0x` hex number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (radix, digits) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (16, rest),
        _ => (10, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}
