/*
 * floor.c -- peer "floor" of imapbench's flood scenario: the least any
 * user-space proxy can do to refuse a connection on Linux. It accepts
 * every connection and closes it at once (epoll, edge-triggered, one
 * thread; accept4 until EAGAIN per wake-up; no limiter, no TLS, no
 * logging). Its CPU per refused attempt is the kernel's cost of the
 * accept and the close plus the system calls' entry; a proxy's figure
 * less this floor is what its own code adds.
 *
 * With "reset" it closes each connection with a single RST (SO_LINGER 0),
 * as HAProxy's tcp-request connection reject and imapgate's refusals do;
 * without, with FIN. On loopback a FIN close looks cheaper to the server
 * than it is: the client's FIN and ACK that follow are processed on the
 * client's core, where a remote client's would be the server's.
 *
 * Usage: floor IPV4 PORT [reset]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc != 3 && !(argc == 4 && strcmp(argv[3], "reset") == 0)) {
		fprintf(stderr, "usage: floor IPV4 PORT [reset]\n");
		return 2;
	}
	int reset = argc == 4;
	struct linger nolinger = {.l_onoff = 1, .l_linger = 0};
	int ln = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(ln, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
		fprintf(stderr, "floor: bad address %s\n", argv[1]);
		return 2;
	}
	if (bind(ln, (struct sockaddr *)&a, sizeof a) < 0 || listen(ln, 4096) < 0) {
		perror("floor: listen");
		return 1;
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = ln};
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ln, &ev) < 0) {
		perror("floor: epoll");
		return 1;
	}
	for (;;) {
		struct epoll_event got[8];
		if (epoll_wait(ep, got, 8, -1) < 0 && errno != EINTR) {
			perror("floor: epoll_wait");
			return 1;
		}
		for (;;) {
			struct sockaddr_storage ss;
			socklen_t sl = sizeof ss;
			int c = accept4(ln, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (c >= 0) {
				if (reset)
					setsockopt(c, SOL_SOCKET, SO_LINGER, &nolinger, sizeof nolinger);
				close(c);
				continue;
			}
			if (errno == EAGAIN)
				break;
			if (errno != EINTR && errno != ECONNABORTED) {
				perror("floor: accept4");
				return 1;
			}
		}
	}
}
