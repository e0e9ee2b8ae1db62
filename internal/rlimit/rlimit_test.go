package rlimit

import "testing"

func TestRaiseOpenFiles(t *testing.T) {
	soft0, hard0, err := OpenFiles()
	if err != nil || soft0 == 0 || soft0 > hard0 {
		t.Fatalf("OpenFiles = %d, %d, %v", soft0, hard0, err)
	}
	soft, hard, err := RaiseOpenFiles()
	if err != nil || hard != hard0 || soft < soft0 {
		t.Fatalf("RaiseOpenFiles = %d, %d, %v; had %d, %d", soft, hard, err, soft0, hard0)
	}
}
