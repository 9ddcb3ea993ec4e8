//! Linux guest image: kernel + initramfs with the agent as `/init` (being written).
