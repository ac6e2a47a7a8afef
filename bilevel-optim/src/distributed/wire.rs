//! The byte form in which processes exchange pass results: values at their exact bits, in the
//! order of [`Params::for_each_slice`], so a decoded result is bit-identical to the sent one.

use dfdx::prelude::{Cpu, Device};

use crate::error::BilevelError;
use crate::params::Params;
use crate::real::Real;

/// A message being written.
#[derive(Default)]
pub(crate) struct Wire {
    pub(crate) bytes: Vec<u8>,
}

impl Wire {
    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn real<E: Real>(&mut self, v: E) {
        v.write_le(&mut self.bytes);
    }
    pub(crate) fn params<E: Real, T: Params<E>>(&mut self, t: &T)
    where
        Cpu: Device<E>,
    {
        self.bytes.reserve(t.num_params() * E::BYTES);
        t.for_each_slice(|a| E::extend_le(a, &mut self.bytes));
    }
}

/// A message being read; every read fails cleanly on a message that is too short.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    /// Whose message this is, for errors.
    from: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], from: usize) -> Self {
        Self { bytes, from }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BilevelError> {
        if self.bytes.len() < n {
            return Err(self.malformed("is shorter than its contents"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, BilevelError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn f64(&mut self) -> Result<f64, BilevelError> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn real<E: Real>(&mut self) -> Result<E, BilevelError> {
        Ok(E::read_le(self.take(E::BYTES)?))
    }
    /// Overwrites `t`'s values from the message.
    pub(crate) fn params<E: Real, T: Params<E>>(&mut self, t: &mut T) -> Result<(), BilevelError>
    where
        Cpu: Device<E>,
    {
        let mut values = self.take(t.num_params() * E::BYTES)?;
        t.map_in_place(|a| {
            let (head, rest) = values.split_at(a.len() * E::BYTES);
            E::fill_from_le(head, a);
            values = rest;
        });
        Ok(())
    }

    /// Fails unless the whole message was read.
    pub(crate) fn finish(self) -> Result<(), BilevelError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("is longer than its contents"))
        }
    }

    fn malformed(&self, what: &str) -> BilevelError {
        BilevelError::Distributed(format!(
            "the pass result from rank {} {what}: the processes must run the same build, data \
             and configuration",
            self.from
        ))
    }
}
