package main

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

func TestIsJournalStream(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	var st unix.Stat_t
	unix.Fstat(fds[0], &st)
	for env, want := range map[string]bool{
		fmt.Sprintf("%d:%d", st.Dev, st.Ino):   true,
		fmt.Sprintf("%d:%d", st.Dev, st.Ino+1): false, // another stream
		"":                                     false,
		"12":                                   false,
		"a:b":                                  false,
	} {
		if got := isJournalStream(env, fds[0]); got != want {
			t.Errorf("isJournalStream(%q) = %v, want %v", env, got, want)
		}
	}
}
