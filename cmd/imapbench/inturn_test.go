package main

import (
	"errors"
	"slices"
	"testing"
)

// inTurn gives every peer every item exactly once, in slices that start
// with the next peer each time, and stops at the first error.
func TestInTurn(t *testing.T) {
	got := make([][]int, 3)
	err := inTurn(4, 10, 3, func(k, from, n int) error {
		for i := from; i < from+n; i++ {
			got[k] = append(got[k], i)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k, items := range got {
		if !slices.Equal(items, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
			t.Errorf("peer %d got %v", k, items)
		}
	}
	var order []int
	inTurn(3, 3, 3, func(k, from, n int) error { order = append(order, k); return nil })
	if !slices.Equal(order, []int{0, 1, 2, 1, 2, 0, 2, 0, 1}) {
		t.Errorf("order %v, want each slice to begin with the next peer", order)
	}
	calls := 0
	boom := errors.New("boom")
	if err := inTurn(5, 50, 2, func(int, int, int) error { calls++; return boom }); err != boom || calls != 1 {
		t.Errorf("after an error: %v, %d calls", err, calls)
	}
	calls = 0
	inTurn(10, 3, 1, func(int, int, int) error { calls++; return nil })
	if calls != 3 {
		t.Errorf("10 slices of 3 items: %d calls, want 3 (no empty slices)", calls)
	}
}
