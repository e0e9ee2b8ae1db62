package conntable

import "fmt"

// Reconfigure applies a new maximum and new timeouts. The bucket count
// cannot change while the table lives (as hashsize needs a module reload);
// a different value is an error. Lowering Max never removes entries: new
// inserts are refused (or early-drop) until the count falls below it.
func (t *Table) Reconfigure(cfg Config) error {
	c, err := t.Prepare(cfg)
	if err != nil {
		return err
	}
	t.own.Store(c)
	return nil
}

// Prepare checks cfg as Reconfigure would and returns it ready for the
// table to read, changing nothing: for a snapshot that Follow reads.
func (t *Table) Prepare(cfg Config) (*Config, error) {
	old := t.cfg()
	if cfg.Buckets == 0 {
		cfg.Buckets = old.Buckets
	}
	if cfg.Buckets != old.Buckets {
		return nil, fmt.Errorf("conntable: buckets cannot change without a restart (%d -> %d)", old.Buckets, cfg.Buckets)
	}
	return cfg.normalise()
}

// Follow makes the table read its configuration from src from now on,
// instead of keeping its own: a caller's snapshot of a whole
// configuration, swapped in one store. src must return what Prepare
// returned. Call it before the table is used.
func (t *Table) Follow(src func() *Config) { t.cfg = src }

// Config returns the configuration in force.
func (t *Table) Config() Config { return *t.cfg() }
