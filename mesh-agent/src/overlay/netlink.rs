//! Address, MTU and routes of the overlay interface.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::attach::netlink::{index_of, NetlinkError};

fn nl(step: String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Netlink { step, source }
}

pub async fn link_up(
    h: Handle,
    iface: String,
    addr: Ipv4Addr,
    mtu: u32,
) -> Result<(), NetlinkError> {
    let idx = index_of(&h, &iface).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {iface} up with MTU {mtu}")))?;
    // Already there after an agent restart: fine.
    match h.address().add(idx, IpAddr::V4(addr), 32).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(nl(format!("adding {addr}/32 to {iface}"))(e)),
    }
}

pub async fn routes(
    h: Handle,
    iface: String,
    add: Vec<Ipv4Net>,
    del: Vec<Ipv4Net>,
) -> Result<(), NetlinkError> {
    let idx = index_of(&h, &iface).await?;
    let msg = |n: &Ipv4Net| {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .output_interface(idx)
            .scope(RouteScope::Link)
            .build()
    };
    for n in &add {
        h.route()
            .add(msg(n))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("route {n} via {iface}")))?;
    }
    for n in &del {
        let _ = h.route().del(msg(n)).execute().await;
    }
    Ok(())
}
