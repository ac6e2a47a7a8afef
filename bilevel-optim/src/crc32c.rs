//! CRC-32C (Castagnoli), the checksum of TensorBoard's records and of the bench's checkpoints:
//! table-driven, from its reflected polynomial, computed incrementally.

/// The table of the reflected polynomial 0x82F63B78.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A running CRC-32C over bytes fed in pieces.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self(!0)
    }
}

impl Crc32c {
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = data.iter().fold(self.0, |c, &b| {
            TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
        });
    }

    /// The checksum of everything fed so far.
    pub fn value(&self) -> u32 {
        !self.0
    }
}

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::default();
    c.update(data);
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_check_value_in_one_piece_or_several() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let mut c = Crc32c::default();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.value(), 0xe306_9283);
    }
}
