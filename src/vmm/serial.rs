//! COM1: a 16550 UART (vm-superio's model) on ports 0x3f8-0x3ff, the Linux
//! guest's console. Its interrupt is ISA IRQ 4 of the in-kernel irqchip,
//! pulsed with KVM_IRQ_LINE from the vCPU thread during the exit that raised
//! it: no eventfd and no irqfd registration, so a fork pays nothing for it.
//!
//! The guest's 8250 driver transmits with interrupts (it waits for "transmit
//! holding register empty" before sending more), so a fork needs the device
//! too, restored from the template's registers — a console that swallowed
//! bytes without interrupting would stall the guest's tty once its buffer
//! filled. Output is line-buffered into `tracing` (target `zeroboot::guest`):
//! at info level while a template boots, where a bounded tail is also kept for
//! error reports, and at debug level in forks, which should be quiet anyway.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::Serial;
use vm_superio::serial::{NoEvents, SerialState};

use super::VmmError;
use super::irq::IrqLine;

/// Longest console line passed on whole; longer ones are split.
const MAX_LINE: usize = 512;
/// Bytes of console output a [`ConsoleTail`] keeps.
const TAIL_BYTES: usize = 16 << 10;

/// The last [`TAIL_BYTES`] of a console, shared with whoever wants to report it.
#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    fn push(&self, line: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.extend(line);
        t.push_back(b'\n');
        let excess = t.len().saturating_sub(TAIL_BYTES);
        t.drain(..excess);
    }

    /// What the console printed last, lossily decoded.
    pub fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&t.iter().copied().collect::<Vec<u8>>()).into_owned()
    }
}

/// Where console bytes go: complete lines to `tracing`.
pub struct ConsoleLog {
    line: Vec<u8>,
    tail: Option<ConsoleTail>,
}

impl ConsoleLog {
    /// A booting template's console: lines at info level, kept in `tail`.
    pub fn recording(tail: ConsoleTail) -> ConsoleLog {
        ConsoleLog {
            line: Vec::new(),
            tail: Some(tail),
        }
    }

    /// A fork's console: lines at debug level.
    pub fn quiet() -> ConsoleLog {
        ConsoleLog {
            line: Vec::new(),
            tail: None,
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        match &self.tail {
            Some(tail) => {
                tracing::info!(target: "zeroboot::guest", "{text}");
                tail.push(&self.line);
            }
            None => tracing::debug!(target: "zeroboot::guest", "{text}"),
        }
        self.line.clear();
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            match b {
                b'\n' => self.emit(),
                b'\r' => {}
                _ => {
                    self.line.push(b);
                    if self.line.len() >= MAX_LINE {
                        self.emit();
                    }
                }
            }
        }
        Ok(buf.len())
    }

    /// The UART model flushes after every byte; lines are emitted whole instead.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The UART's registers, as saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialRegs {
    /// Divisor latch, low and high byte.
    pub divisor: [u8; 2],
    /// Interrupt enable register.
    pub ier: u8,
    /// Interrupt identification register.
    pub iir: u8,
    /// Line control register.
    pub lcr: u8,
    /// Line status register.
    pub lsr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Modem status register.
    pub msr: u8,
    /// Scratch register.
    pub scr: u8,
    /// Received bytes not yet read by the guest.
    pub rx: Vec<u8>,
}

impl From<SerialState> for SerialRegs {
    fn from(s: SerialState) -> SerialRegs {
        SerialRegs {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            ier: s.interrupt_enable,
            iir: s.interrupt_identification,
            lcr: s.line_control,
            lsr: s.line_status,
            mcr: s.modem_control,
            msr: s.modem_status,
            scr: s.scratch,
            rx: s.in_buffer,
        }
    }
}

impl From<&SerialRegs> for SerialState {
    fn from(r: &SerialRegs) -> SerialState {
        SerialState {
            baud_divisor_low: r.divisor[0],
            baud_divisor_high: r.divisor[1],
            interrupt_enable: r.ier,
            interrupt_identification: r.iir,
            line_control: r.lcr,
            line_status: r.lsr,
            modem_control: r.mcr,
            modem_status: r.msr,
            scratch: r.scr,
            in_buffer: r.rx.clone(),
        }
    }
}

/// COM1 attached to a VM.
pub struct SerialConsole {
    uart: Serial<IrqLine, NoEvents, ConsoleLog>,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SerialConsole").field(&self.regs()).finish()
    }
}

impl SerialConsole {
    /// A UART in its reset state.
    pub fn new(irq: IrqLine, out: ConsoleLog) -> SerialConsole {
        SerialConsole {
            uart: Serial::new(irq, out),
        }
    }

    /// A UART with saved registers. An interrupt the saved state had pending
    /// was already delivered to the saved irqchip, so it is not raised again.
    pub fn from_regs(
        regs: &SerialRegs,
        irq: IrqLine,
        out: ConsoleLog,
    ) -> Result<SerialConsole, VmmError> {
        irq.arm(false);
        let uart =
            Serial::from_state(&SerialState::from(regs), irq, NoEvents, out).map_err(|e| {
                VmmError::DeviceState {
                    device: "serial",
                    detail: format!("{e:?}"),
                }
            })?;
        uart.interrupt_evt().arm(true);
        Ok(SerialConsole { uart })
    }

    /// The registers, for a snapshot.
    pub fn regs(&self) -> SerialRegs {
        self.uart.state().into()
    }

    /// A guest read of register `offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// A guest write of register `offset`. A failed interrupt injection
    /// cannot be reported to the guest; it is logged.
    pub fn write(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.uart.write(offset, value) {
            tracing::warn!(error = ?e, "serial console write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_assembled_and_the_tail_is_bounded() {
        let tail = ConsoleTail::default();
        let mut log = ConsoleLog::recording(tail.clone());
        log.write_all(b"Linux version 6.1\r\nhal").unwrap();
        log.flush().unwrap();
        assert_eq!(tail.text(), "Linux version 6.1\n", "a partial line waits");
        log.write_all(b"f\n").unwrap();
        assert_eq!(tail.text(), "Linux version 6.1\nhalf\n");
        for _ in 0..100 {
            log.write_all(&[b'x'; 1000]).unwrap();
        }
        let text = tail.text();
        assert!(text.len() <= TAIL_BYTES);
        assert!(
            text.lines().all(|l| l.len() <= MAX_LINE),
            "long lines are split"
        );
    }

    #[test]
    fn registers_survive_a_round_trip_through_the_snapshot_form() {
        let state = SerialState {
            interrupt_enable: 0x03,
            line_control: 0x03,
            scratch: 0x5a,
            in_buffer: vec![1, 2, 3],
            ..SerialState::default()
        };
        let regs = SerialRegs::from(state.clone());
        assert_eq!(SerialState::from(&regs), state);
        let json = serde_json::to_string(&regs).unwrap();
        assert_eq!(serde_json::from_str::<SerialRegs>(&json).unwrap(), regs);
    }
}
