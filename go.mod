module imapgate

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/emersion/go-imap/v2 v2.0.0-beta.8 // indirect
	github.com/emersion/go-message v0.18.2 // indirect
	github.com/emersion/go-sasl v0.0.0-20241020182733-b788ff22d5a6 // indirect
	github.com/hashicorp/golang-lru/v2 v2.0.7 // indirect
	github.com/pires/go-proxyproto v0.15.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)
