//! A drop-in replacement for the `getrandom` 0.2 API, patched into the swarmca workspace.
//!
//! getrandom 0.2 issues the raw `SYS_getrandom` syscall on Linux, which the madsim simulator
//! cannot intercept, so keys made by *ring* and `rand` 0.8 would differ between two runs of the
//! same seed. This crate calls the libc *function* `getrandom(3)` instead: glibc's in
//! production (the same syscall underneath), madsim's seeded override in simulation.
//!
//! It feeds production keys, so it is deliberately tiny: it loops on short reads, retries
//! `EINTR`, and reports every other failure as an error. It never falls back to a weaker
//! source.

#![no_std]

extern crate std;

use core::fmt;
use core::num::NonZeroU32;

/// An error from the entropy source: an OS `errno`, or one of the codes below.
#[derive(Copy, Clone, Eq, PartialEq)]
pub struct Error(NonZeroU32);

const fn code(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(c) => c,
        None => panic!("error codes are non-zero"),
    }
}

impl Error {
    /// This platform is not supported.
    pub const UNSUPPORTED: Error = Error(code(Error::INTERNAL_START));
    /// The OS returned a failure without an `errno`.
    pub const ERRNO_NOT_POSITIVE: Error = Error(code(Error::INTERNAL_START + 1));
    /// Codes below this are OS `errno` values.
    pub const INTERNAL_START: u32 = 1 << 31;
    /// Codes from this value on are for custom backends.
    pub const CUSTOM_START: u32 = (1 << 31) + (1 << 30);

    /// The raw code.
    pub fn code(self) -> NonZeroU32 {
        self.0
    }

    /// The OS `errno`, if this error is one.
    pub fn raw_os_error(self) -> Option<i32> {
        if self.0.get() < Self::INTERNAL_START {
            i32::try_from(self.0.get()).ok()
        } else {
            None
        }
    }
}

impl From<NonZeroU32> for Error {
    fn from(code: NonZeroU32) -> Error {
        Error(code)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_os_error() {
            Some(errno) => write!(f, "Error {{ os_error: {errno} }}"),
            None => write!(f, "Error {{ internal_code: {} }}", self.0.get()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_os_error() {
            Some(errno) => write!(f, "getrandom failed: OS error {errno}"),
            None if *self == Error::UNSUPPORTED => f.write_str("getrandom: unsupported platform"),
            None => write!(f, "getrandom failed: internal error {}", self.0.get()),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        match e.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(e),
        }
    }
}

/// Fills `dest` with random bytes from the OS (or the simulator), or fails.
pub fn getrandom(dest: &mut [u8]) -> Result<(), Error> {
    let mut rest = dest;
    while !rest.is_empty() {
        let n = sys::fill(rest)?;
        // A read never returns more than asked; `n == 0` would loop forever, so treat it as
        // a failure rather than retrying.
        if n == 0 || n > rest.len() {
            return Err(Error::ERRNO_NOT_POSITIVE);
        }
        rest = &mut core::mem::take(&mut rest)[n..];
    }
    Ok(())
}

#[allow(unsafe_code)]
mod sys {
    use super::Error;
    use core::num::NonZeroU32;

    /// One `getrandom(3)` call; `EINTR` is retried, other errors returned.
    pub(super) fn fill(buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the whole call.
            let r = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno == libc::EINTR {
                continue;
            }
            return Err(u32::try_from(errno)
                .ok()
                .and_then(NonZeroU32::new)
                .map_or(Error::ERRNO_NOT_POSITIVE, Error::from));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_length_including_large_and_empty() {
        for len in [0usize, 1, 7, 32, 255, 256, 257, 4096, 1 << 20] {
            let mut buf = std::vec![0u8; len];
            getrandom(&mut buf).unwrap();
            if len >= 32 {
                // 32 zero bytes from a working source: probability 2^-256.
                assert!(buf.iter().any(|&b| b != 0), "len {len} left all zeros");
            }
        }
    }

    #[test]
    fn two_draws_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        getrandom(&mut a).unwrap();
        getrandom(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn bytes_look_uniform() {
        // 1 MiB: every byte value should appear roughly 4096 times; a stuck or biased source
        // (e.g. a fallback returning a constant) fails this by a wide margin.
        let mut buf = std::vec![0u8; 1 << 20];
        getrandom(&mut buf).unwrap();
        let mut counts = [0u32; 256];
        for &b in &buf {
            counts[b as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 3500 && *max < 4700, "byte histogram out of range: min {min} max {max}");
    }

    #[test]
    fn error_codes_round_trip() {
        let e = Error::from(NonZeroU32::new(libc::EINTR as u32).unwrap());
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
        assert!(std::format!("{e}").contains("OS error"));
        assert_eq!(Error::UNSUPPORTED.raw_os_error(), None);
        const { assert!(Error::CUSTOM_START > Error::INTERNAL_START) };
        let io: std::io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(libc::EINTR));
    }
}
