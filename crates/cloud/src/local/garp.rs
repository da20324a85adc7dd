//! Gratuitous ARP: after an address moves to another instance, one broadcast ARP
//! request from the new holder ("who has A? tell A at MAC") makes every neighbour on the
//! segment update the MAC it caches for A at once, instead of sending to the old holder
//! until its entry goes stale (tens of seconds).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;

/// Announces each of `addresses` on `interface` of network namespace `netns`, `count`
/// times.
pub(crate) async fn announce(
    netns: &str,
    interface: &str,
    addresses: &[Ipv4Addr],
    count: usize,
) -> io::Result<()> {
    if addresses.is_empty() {
        return Ok(());
    }
    let (netns, interface, addresses) =
        (netns.to_string(), interface.to_string(), addresses.to_vec());
    // setns moves the calling thread: a thread of its own, which ends afterwards.
    let sent = std::thread::spawn(move || -> io::Result<()> {
        let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
        // SAFETY: setns on a descriptor we own; it moves only this short-lived thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = packet_socket()?;
        let (index, mac) = interface_identity(&socket, &interface)?;
        for _ in 0..count {
            for address in &addresses {
                send(&socket, index, mac, *address)?;
            }
        }
        Ok(())
    });
    tokio::task::spawn_blocking(move || {
        sent.join()
            .unwrap_or_else(|_| Err(io::Error::other("the announcing thread panicked")))
    })
    .await
    .map_err(io::Error::other)?
}

fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface's index and MAC address.
fn interface_identity(socket: &OwnedFd, name: &str) -> io::Result<(i32, [u8; 6])> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero ifreq is valid; the name is copied in below, NUL-terminated.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFHWADDR the union holds the hardware address.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok((index as i32, mac))
}

/// The Ethernet frame of a gratuitous ARP request for `address` from `mac`.
fn frame(mac: [u8; 6], address: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&address.octets());
    // Target hardware address stays zero; target protocol address is the same address.
    f[38..42].copy_from_slice(&address.octets());
    f
}

fn send(socket: &OwnedFd, index: i32, mac: [u8; 6], address: Ipv4Addr) -> io::Result<()> {
    let frame = frame(mac, address);
    // SAFETY: an all-zero sockaddr_ll is valid; fields are set below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: sending a buffer we own to a sockaddr_ll of the size given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_request_for_the_address_itself() {
        let f = frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 200, 128, 5));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[28..32], &[10, 200, 128, 5]);
        assert_eq!(&f[38..42], &[10, 200, 128, 5]);
        assert_eq!(&f[32..38], &[0; 6]);
    }
}
