package integration

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The Redis rights the README asks an admin to give imapgate are the ones
// the real-Redis tests run under (setup.sh's, whose key and channel
// patterns only widen {imapgate} to the tests' own prefixes), so a right
// the README forgets fails the tests, not an admin's first start.
func TestReadmeRedisACLIsTheTestsOne(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	setup, err := os.ReadFile("redis/setup.sh")
	if err != nil {
		t.Fatal(err)
	}
	doc := regexp.MustCompile(`(?m)^user imapgate on >PASSWORD ~\{imapgate\}:\* &\{imapgate\}:\* (.+)$`).FindSubmatch(readme)
	test := regexp.MustCompile(`(?m)^\s*acl="~\{imapgate\*\}:\* &\{imapgate\*\}:\* (.+)"$`).FindSubmatch(setup)
	if doc == nil || test == nil {
		t.Fatalf("README's ACL line found: %v; setup.sh's acl= found: %v", doc != nil, test != nil)
	}
	if d, s := strings.TrimSpace(string(doc[1])), strings.TrimSpace(string(test[1])); d != s {
		t.Errorf("README gives imapgate %q; the tests run with %q", d, s)
	}
}
