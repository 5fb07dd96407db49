// SPDX-License-Identifier: GPL-2.0
// depmap's kernel event source (README "Kernel events"): who opened each TCP connection of
// depmap's network namespace, and the time between a request and its answer on it.
//
// Four BTF tracepoints (tp_btf: no tracefs, and the socket cookie that sock_diag reports):
//   inet_sock_set_state  CLOSE -> SYN_SENT runs in the connecting task: a CONNECT event with
//                        its tgid, comm, uid, cgroup and start time, and the socket is
//                        remembered as a client. The event wakes the reader only when the
//                        process is new to it (or was last read long ago, or exec'd since):
//                        the reader reads /proc then, and reuses what it read otherwise. SYN_RECV -> ESTABLISHED runs in softirq (the
//                        task is meaningless): the socket is remembered as a server whose
//                        owner is still to come. -> CLOSE forgets it, with a CLOSED event
//                        saying whether the peer's FIN had arrived.
//   sock_send_length     run in the task that sends or receives, after the call returned: the
//   sock_recv_length     first one on a server socket gives its OWNER event, and
//                        the last send of a request and the first receive of its answer give
//                        a RESPONSE event (client), or the mirror on a server socket.
//   sched_process_exec   a process that exec'd is new again (its /proc facts changed).
//
// Two cgroup_skb programs on the cgroup v2 root see every UDP datagram of every process
// (collect.udp): they sum its payload per (socket cookie, local and remote address and port)
// in the udp_flows map, which the poll loop reads (UDP has no counters in sock_diag), and
// time DNS exchanges (port 53): a query's datagram to the flow's pending time, the next
// datagram back a UDP_RESPONSE event. A cgroup/sock_create program names the process that
// creates each UDP socket (UDP_OWNER).
//
// Built by bpf/build.sh (clang -target bpf); the object is committed beside this file and the
// test suite checks that it matches. The kernel types below are declared with only the fields
// read, and `preserve_access_index`: the loader relocates every offset against the running
// kernel's BTF (CO-RE), so no vmlinux.h is needed and one object runs on every kernel with BTF.

// The fixed-width types the libbpf headers use (not linux/types.h: it pulls in the host's
// asm/ headers, which a BPF target need not have).
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

// From the kernel's UAPI (include/uapi/linux/bpf.h), which is ABI: these values never change.
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_F_NO_PREALLOC 1
#define BPF_ANY 0
#define BPF_NOEXIST 1

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

// Ring buffer submit flags: BPF_RB_NO_WAKEUP (the reader drains on its own timer) and
// BPF_RB_FORCE_WAKEUP (wake it now, even when older records wait unread).
#define NO_WAKEUP 1
#define FORCE_WAKEUP 2

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	unsigned short skc_family;
	possible_net_t skc_net;
	unsigned long skc_flags; // sk->sk_flags is #defined as this
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

// include/net/sock.h; the value is relocated against the running kernel (CO-RE).
enum sock_flags {
	SOCK_DEAD,
	SOCK_DONE, // set by tcp_fin(): the peer's FIN was received (and counted in rcv_nxt)
};

struct task_struct {
	struct task_struct *group_leader;
	__u64 start_boottime;
} __attribute__((preserve_access_index));

// Event kinds; the first field of every event (src/collect/ebpf.rs decodes them).
enum kind { CONNECT = 1, OWNER = 2, RESPONSE = 3, CLOSED = 4, UDP_OWNER = 5, UDP_RESPONSE = 6 };

// CONNECT and OWNER: the process that opened, or first used, the socket.
struct owner_event {
	__u32 kind;
	__u32 tgid;
	__u32 uid;
	// 1: read the process's /proc entry now (first event of it since REREAD_NS, or since it
	// exec'd); 0: the reader read it for an earlier event and may reuse that.
	__u32 fresh;
	__u64 cookie;
	// The thread group leader's start, boot clock, nanoseconds (/proc/PID/stat's start time
	// is this in clock ticks): the process's identity across pid reuse.
	__u64 start_ns;
	__u64 cgroup;
	char comm[16];
	// The thread that made the call: the reader checks that /proc/TGID/task/TID still has
	// this comm (an exec between the event and the read would have changed it).
	__u32 tid;
	__u32 _pad;
};

// RESPONSE: one exchange's response time.
struct response_event {
	__u32 kind;
	__u32 _pad;
	__u64 cookie;
	__u64 nanos;
};

// CLOSED: a socket reached CLOSE; whether its peer's FIN had been received (its final
// bytes_received counts the FIN then). Spares the reader of destroy notifications an exact
// lookup per close.
struct closed_event {
	__u32 kind;
	__u32 fin_received;
	__u64 cookie;
};

enum role { CLIENT = 1, SERVER = 2 };
enum phase { IDLE = 0, REQUEST = 1, ANSWER = 2 };

// A socket opened after the programs were attached.
struct conn {
	__u64 last_ns; // the last send (client) or receive (server) of the current request
	__u8 role;
	__u8 phase;
	__u8 owner_known;
	__u8 _pad[5];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // set by the loader (collect::ebpf::RING_BYTES)
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // set by the loader (collect::ebpf::MAX_SOCKETS)
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64); // socket cookie
	__type(value, struct conn);
} conns SEC(".maps");

// When the reader was last told to read a process (by the `fresh` flag of an owner event).
struct seen {
	__u64 start_ns; // the process's start (a reused tgid is another process)
	__u64 told_ns;  // boot clock
};

// After this long, a process's next owner event is fresh again: the reader keeps what it
// read for longer than this (collect::ebpf::PROCESS_CACHE_AGE, 10 s).
#define REREAD_NS (8ULL * 1000 * 1000 * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); // the busiest process set that still gets one read each
	__type(key, __u32);         // tgid
	__type(value, struct seen);
} processes SEC(".maps");

// Losses, per CPU: the loader sums them.
enum loss { RING_FULL = 0, MAP_FULL = 1, UDP_FULL = 2, LOSSES = 3 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOSSES);
	__type(key, __u32);
	__type(value, __u64);
} losses SEC(".maps");

// Set at load: the network namespace (inode) whose sockets are followed, or every one when
// all_netns is set (collect.namespaces = "all").
const volatile __u32 netns_ino = 0;
const volatile __u32 all_netns = 0;

static __always_inline void lost(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&losses, &which);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline int followed(const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return all_netns || BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) == netns_ino;
}

static __always_inline int owner(__u32 kind, __u64 cookie, __u64 flags)
{
	struct owner_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		lost(RING_FULL);
		return 0;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = pid_tgid >> 32;
	__u64 start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	__u64 now = bpf_ktime_get_boot_ns();
	struct seen *s = bpf_map_lookup_elem(&processes, &tgid);
	int fresh = !s || s->start_ns != start_ns || now - s->told_ns > REREAD_NS;
	if (fresh) {
		struct seen told = {.start_ns = start_ns, .told_ns = now};
		bpf_map_update_elem(&processes, &tgid, &told, BPF_ANY);
	}
	e->kind = kind;
	e->tgid = tgid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->fresh = fresh;
	e->cookie = cookie;
	e->start_ns = start_ns;
	e->cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->tid = (__u32)pid_tgid;
	e->_pad = 0;
	// A fresh connect wakes the reader: /proc is read while the process lives (a curl is
	// gone 20 ms after its connect). Everything else waits for the next drain.
	bpf_ringbuf_submit(e, fresh && (flags & FORCE_WAKEUP) ? FORCE_WAKEUP : NO_WAKEUP);
	return 1;
}

static __always_inline void closed(struct sock *sk, __u64 cookie)
{
	struct closed_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		lost(RING_FULL);
		return;
	}
	unsigned long flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	e->kind = CLOSED;
	e->fin_received = (flags >> bpf_core_enum_value(enum sock_flags, SOCK_DONE)) & 1;
	e->cookie = cookie;
	bpf_ringbuf_submit(e, NO_WAKEUP);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(set_state, struct sock *sk, int old, int new)
{
	if (!followed(sk))
		return 0;
	__u64 cookie = bpf_get_socket_cookie(sk);
	if (new == TCP_CLOSE) {
		bpf_map_delete_elem(&conns, &cookie);
		closed(sk, cookie);
		return 0;
	}
	struct conn c = {};
	if (old == TCP_CLOSE && new == TCP_SYN_SENT) {
		c.role = CLIENT;
		c.owner_known = 1;
		owner(CONNECT, cookie, FORCE_WAKEUP);
	} else if (old == TCP_SYN_RECV && new == TCP_ESTABLISHED) {
		c.role = SERVER;
	} else {
		return 0;
	}
	if (bpf_map_update_elem(&conns, &cookie, &c, BPF_ANY))
		lost(MAP_FULL);
	return 0;
}

static __always_inline void response(__u64 cookie, __u64 nanos)
{
	struct response_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		lost(RING_FULL);
		return;
	}
	e->kind = RESPONSE;
	e->_pad = 0;
	e->cookie = cookie;
	e->nanos = nanos;
	bpf_ringbuf_submit(e, NO_WAKEUP);
}

// One send (sending = 1) or receive of `ret` bytes on `sk`, in the task that made it.
static __always_inline int moved(struct sock *sk, int ret, int sending)
{
	if (ret <= 0)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct conn *c = bpf_map_lookup_elem(&conns, &cookie);
	if (!c)
		return 0;
	if (!c->owner_known)
		// Servers outlive their first reply: drained with the response times.
		c->owner_known = owner(OWNER, cookie, NO_WAKEUP);
	__u64 now = bpf_ktime_get_ns();
	// The request is what the client sends; a server receives it.
	int request = (c->role == CLIENT) == sending;
	if (request) {
		c->last_ns = now;
		c->phase = REQUEST;
	} else if (c->phase == REQUEST) {
		c->phase = ANSWER;
		response(cookie, now - c->last_ns);
	}
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(send_length, struct sock *sk, int ret, int flags)
{
	return moved(sk, ret, 1);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(recv_length, struct sock *sk, int ret, int flags)
{
	return moved(sk, ret, 0);
}

// Runs in the task that exec'd: its next owner event is fresh (new executable, command line).
SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec, struct task_struct *p, int old_pid, void *bprm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&processes, &tgid);
	return 0;
}

// ---- UDP flows (cgroup_skb/egress and ingress on the cgroup v2 root) ----

// The first bytes of the UAPI __sk_buff (include/uapi/linux/bpf.h): a context the verifier
// rewrites by offset, so its layout is ABI (no CO-RE).
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
};

struct ipv4_header {
	__u8 ihl_version; // ihl in the low 4 bits (little-endian bitfield order)
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6_header {
	__u32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

struct udp_header {
	__be16 source;
	__be16 dest;
	__be16 len;
	__u16 check;
};

// A UDP flow: one socket and one remote endpoint (addresses in network order, ports in host
// order; IPv4 in the first word). Mirrors collect::ebpf::UdpFlowKey.
struct udp_flow_key {
	__u64 cookie;
	__u32 local[4];
	__u32 remote[4];
	__u16 lport;
	__u16 rport;
	__u16 family;
	__u16 _pad;
};

struct udp_flow {
	__u64 bytes_out; // UDP payload sent
	__u64 bytes_in;  // and received
	__u64 datagrams_out;
	__u64 datagrams_in;
	__u32 first_in; // 1: its first datagram was received (an inbound flow)
	__u32 _pad;
	// A DNS flow's unanswered query: when its datagram went out (client) or came in
	// (server), boot clock; 0 when none waits.
	__u64 query_ns;
};

// UDP_RESPONSE: one DNS exchange's time (query's datagram → the answer's), on its flow.
struct udp_response_event {
	__u32 kind;
	__u32 _pad;
	__u64 nanos;
	struct udp_flow_key flow;
};

#define DNS_PORT 53

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); // set by the loader (collect::ebpf::MAX_UDP_FLOWS)
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct udp_flow_key);
	__type(value, struct udp_flow);
} udp_flows SEC(".maps");

// Set at load: the network namespace (cookie) whose datagrams are summed (all_netns: every).
const volatile __u64 netns_cookie = 0;


static __always_inline void udp_add(struct udp_flow *f, int in, __u64 payload)
{
	if (in) {
		__sync_fetch_and_add(&f->bytes_in, payload);
		__sync_fetch_and_add(&f->datagrams_in, 1);
	} else {
		__sync_fetch_and_add(&f->bytes_out, payload);
		__sync_fetch_and_add(&f->datagrams_out, 1);
	}
}

// A DNS answer on flow `k` whose query waits in `f`: its time as a UDP_RESPONSE event (the
// poll loop adds it to the flow's window). With concurrent queries on one flow (a
// resolver's A and AAAA), the first answer is timed from the first query; the second
// query's answer finds none waiting and is not timed.
static __always_inline void udp_answered(struct udp_flow *f, const struct udp_flow_key *k)
{
	__u64 since = f->query_ns;
	f->query_ns = 0;
	struct udp_response_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		lost(RING_FULL);
		return;
	}
	e->kind = UDP_RESPONSE;
	e->_pad = 0;
	e->nanos = bpf_ktime_get_boot_ns() - since;
	__builtin_memcpy(&e->flow, k, sizeof(*k));
	bpf_ringbuf_submit(e, NO_WAKEUP);
}

static __always_inline int udp_account(struct __sk_buff *skb, int in)
{
	struct udp_flow_key k = {};
	__u32 l4 = 0;
	if (skb->protocol == __builtin_bswap16(ETH_P_IP)) {
		struct ipv4_header ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return 1;
		// Later fragments carry no UDP header; the first one's length covers the datagram.
		if (ip.protocol != IPPROTO_UDP || (ip.frag_off & __builtin_bswap16(0x1fff)))
			return 1;
		k.family = AF_INET;
		k.local[0] = in ? ip.daddr : ip.saddr;
		k.remote[0] = in ? ip.saddr : ip.daddr;
		l4 = (ip.ihl_version & 0xf) * 4;
	} else if (skb->protocol == __builtin_bswap16(ETH_P_IPV6)) {
		struct ipv6_header ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return 1;
		// Extension headers are not followed: such datagrams are not counted.
		if (ip6.nexthdr != IPPROTO_UDP)
			return 1;
		k.family = AF_INET6;
		__builtin_memcpy(k.local, in ? ip6.daddr : ip6.saddr, 16);
		__builtin_memcpy(k.remote, in ? ip6.saddr : ip6.daddr, 16);
		l4 = 40;
	} else {
		return 1;
	}
	if (!all_netns && bpf_get_netns_cookie(skb) != netns_cookie)
		return 1;
	struct udp_header uh;
	if (bpf_skb_load_bytes(skb, l4, &uh, sizeof(uh)))
		return 1;
	__u16 len = __builtin_bswap16(uh.len);
	__u64 payload = len > 8 ? len - 8 : 0;
	k.lport = __builtin_bswap16(in ? uh.dest : uh.source);
	k.rport = __builtin_bswap16(in ? uh.source : uh.dest);
	k.cookie = bpf_get_socket_cookie(skb);
	// DNS: a query goes to port 53 (client) or arrives on it (server); the answer is the
	// datagram the other way.
	int query = (!in && k.rport == DNS_PORT) || (in && k.lport == DNS_PORT);
	int answer = (in && k.rport == DNS_PORT) || (!in && k.lport == DNS_PORT);
	struct udp_flow *f = bpf_map_lookup_elem(&udp_flows, &k);
	if (f) {
		udp_add(f, in, payload);
		if (query && !f->query_ns)
			f->query_ns = bpf_ktime_get_boot_ns();
		else if (answer && f->query_ns)
			udp_answered(f, &k);
		return 1;
	}
	struct udp_flow n = {};
	if (in) {
		n.bytes_in = payload;
		n.datagrams_in = 1;
	} else {
		n.bytes_out = payload;
		n.datagrams_out = 1;
	}
	n.first_in = in;
	if (query)
		n.query_ns = bpf_ktime_get_boot_ns();
	// Two CPUs may create the same flow at once: the loser adds to the winner's entry.
	if (bpf_map_update_elem(&udp_flows, &k, &n, BPF_NOEXIST)) {
		f = bpf_map_lookup_elem(&udp_flows, &k);
		if (!f) {
			lost(UDP_FULL);
			return 1;
		}
		udp_add(f, in, payload);
	}
	return 1;
}

// The first fields of the UAPI bpf_sock (include/uapi/linux/bpf.h): a context, by offset.
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
};

// In the task that creates a UDP socket: its owner (a resolver's socket lives a millisecond,
// too short for /proc to find its holder). Returns 1: creation goes on.
SEC("cgroup/sock_create")
int udp_create(struct bpf_sock *sk)
{
	if (sk->protocol != IPPROTO_UDP || (sk->family != AF_INET && sk->family != AF_INET6))
		return 1;
	if (!all_netns && bpf_get_netns_cookie(sk) != netns_cookie)
		return 1;
	owner(UDP_OWNER, bpf_get_socket_cookie(sk), FORCE_WAKEUP);
	return 1;
}

// Both only read: they return 1 (let the datagram through) whatever happens.
SEC("cgroup_skb/egress")
int udp_egress(struct __sk_buff *skb)
{
	return udp_account(skb, 0);
}

SEC("cgroup_skb/ingress")
int udp_ingress(struct __sk_buff *skb)
{
	return udp_account(skb, 1);
}
