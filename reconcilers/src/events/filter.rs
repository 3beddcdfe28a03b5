//! A classic BPF socket filter for the all-namespace event socket: the
//! kernel drops, before it delivers them, the notifications the daemon
//! would only skip (the echoes of its own changes inside containers, and
//! the kernel's own routes).
//!
//! Why in the kernel: for every notification from another namespace, the
//! kernel looks the sender's namespace up twice among the ids the node's
//! namespace has given out (`peernet_has_id`, then `peernet2id`), and each
//! lookup walks all of them, one per container. The filter runs between
//! the two, so a dropped notification costs one walk instead of two, and
//! no copy, wake-up or parse in the daemon. An isolate makes about twenty
//! such notifications, almost all our own echoes or the kernel's routes.
//!
//! The filter reads the first message of each datagram; the kernel sends
//! each route, address, link and neighbour notification alone.

/// Offset of `nlmsg_type` (u16) in a netlink message.
const NLMSG_TYPE: u32 = 4;
/// Offset of `nlmsg_pid` (u32): the port id of the socket whose request
/// caused the notification.
const NLMSG_PID: u32 = 12;
/// Offset of `rtm_protocol` (u8) in a route message: after the 16-byte
/// netlink header, `rtmsg`'s family, dst_len, src_len, tos, table.
const RTM_PROTOCOL: u32 = 16 + 5;
/// Deliver the whole datagram.
const ACCEPT: u32 = u32::MAX;
/// Drop it.
const DROP: u32 = 0;

/// The filter program: drop a datagram whose first message was caused by
/// a request from port id `own_port` (as stored in the message: host
/// order), or is a route with protocol `kernel`; deliver the rest.
pub fn program(own_port: u32) -> Vec<libc::sock_filter> {
    let code = |c: u32| c as u16;
    let stmt = |c: u32, k: u32| libc::sock_filter {
        code: code(c),
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
        jt,
        jf,
        k,
    };
    // Absolute loads read network byte order; netlink is in host order.
    let port = u32::from_be_bytes(own_port.to_ne_bytes());
    let kind = |t: u16| u32::from(u16::from_be_bytes(t.to_ne_bytes()));
    vec![
        /* 0 */ stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NLMSG_PID),
        /* 1 */ jeq(port, 7 - 2, 0),
        /* 2 */ stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, NLMSG_TYPE),
        /* 3 */ jeq(kind(libc::RTM_NEWROUTE), 1, 0),
        /* 4 */ jeq(kind(libc::RTM_DELROUTE), 0, 8 - 5),
        /* 5 */ stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, RTM_PROTOCOL),
        /* 6 */ jeq(u32::from(libc::RTPROT_KERNEL), 0, 8 - 7),
        /* 7 */ stmt(libc::BPF_RET | libc::BPF_K, DROP),
        /* 8 */ stmt(libc::BPF_RET | libc::BPF_K, ACCEPT),
    ]
}

/// `SO_ATTACH_FILTER` (asm-generic, as on x86-64 and arm64).
const SO_ATTACH_FILTER: libc::c_int = 26;

/// Attaches `program` to the socket `fd`.
pub fn attach(fd: std::os::fd::RawFd, program: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, alive for the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program the way the kernel does, on `packet`: only the
    /// instructions [`program`] uses.
    fn run(program: &[libc::sock_filter], packet: &[u8]) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let k = i.k as usize;
            let code = u32::from(i.code);
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    acc = u32::from_be_bytes(packet[k..k + 4].try_into().unwrap())
                }
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => {
                    acc = u32::from(u16::from_be_bytes(packet[k..k + 2].try_into().unwrap()))
                }
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => acc = u32::from(packet[k]),
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if acc == i.k { i.jt } else { i.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                other => panic!("instruction {other:#x} not modelled"),
            }
            pc += 1;
        }
    }

    /// A netlink message of `kind` from `port`, with `rtmsg` bytes after it.
    fn message(kind: u16, port: u32, protocol: u8) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&28u32.to_ne_bytes()); // nlmsg_len
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&port.to_ne_bytes());
        m.extend_from_slice(&[10, 128, 0, 0, 254, protocol, 0, 1]);
        m.extend_from_slice(&0u32.to_ne_bytes());
        m
    }

    #[test]
    fn our_echoes_and_kernel_routes_are_dropped_everything_else_delivered() {
        let ours = 0x8000_1234u32;
        let p = program(ours);
        let ours_route = message(libc::RTM_NEWROUTE, ours, 81);
        assert_eq!(run(&p, &ours_route), DROP);
        let ours_link = message(libc::RTM_NEWLINK, ours, 0);
        assert_eq!(run(&p, &ours_link), DROP);
        for kind in [libc::RTM_NEWROUTE, libc::RTM_DELROUTE] {
            assert_eq!(run(&p, &message(kind, 0, 2)), DROP, "the kernel's route");
            assert_eq!(run(&p, &message(kind, 4242, 2)), DROP);
            assert_eq!(run(&p, &message(kind, 4242, 81)), ACCEPT, "someone's route");
            assert_eq!(run(&p, &message(kind, 0, 3)), ACCEPT, "a boot route");
        }
        // Not a route: protocol's byte means nothing there.
        assert_eq!(run(&p, &message(libc::RTM_DELADDR, 4242, 2)), ACCEPT);
        assert_eq!(run(&p, &message(libc::RTM_NEWLINK, 0, 2)), ACCEPT);
        assert_eq!(run(&p, &message(libc::RTM_DELNEIGH, ours + 1, 0)), ACCEPT);
    }
}
