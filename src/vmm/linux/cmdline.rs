//! The kernel command line: the caller's (or the image's default) plus what
//! this board needs. The board has no PCI bus, so `pci=off` spares the kernel
//! probing configuration ports that only answer all-ones.

use linux_loader::cmdline::Cmdline;

use super::LinuxError;

/// Parameters the board always adds.
const BOARD: &str = "pci=off";

/// Builds and validates the command line (printable ASCII words separated by
/// single spaces, at most `capacity` bytes with its terminating NUL).
pub fn build(base: &str, capacity: usize) -> Result<Cmdline, LinuxError> {
    let invalid = |e: linux_loader::cmdline::Error| LinuxError::Cmdline(e.to_string());
    let words = base.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(c) = words.chars().find(|c| !c.is_ascii_graphic() && *c != ' ') {
        return Err(LinuxError::Cmdline(format!("{c:?} is not printable ASCII")));
    }
    let mut cmdline = Cmdline::try_from(&words, capacity).map_err(invalid)?;
    if !base.split_whitespace().any(|w| w == BOARD) {
        cmdline.insert_str(BOARD).map_err(invalid)?;
    }
    Ok(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn the_board_parameter_is_added_once() {
        let c = build("console=ttyS0 quiet", 256).unwrap();
        assert_eq!(text(&c), "console=ttyS0 quiet pci=off");
        let c = build("pci=off console=ttyS0", 256).unwrap();
        assert_eq!(text(&c), "pci=off console=ttyS0");
    }

    #[test]
    fn init_arguments_stay_after_the_separator() {
        let c = build("console=ttyS0 -- --verbose", 256).unwrap();
        assert_eq!(text(&c), "console=ttyS0 pci=off -- --verbose");
    }

    #[test]
    fn whitespace_is_normalised() {
        let c = build(" console=ttyS0\n\tquiet  ", 256).unwrap();
        assert_eq!(text(&c), "console=ttyS0 quiet pci=off");
    }

    #[test]
    fn oversized_or_non_ascii_lines_are_refused() {
        assert!(matches!(
            build(&"x".repeat(300), 256),
            Err(LinuxError::Cmdline(_))
        ));
        assert!(matches!(
            build("console=ttyS0 é", 256),
            Err(LinuxError::Cmdline(_))
        ));
    }
}
