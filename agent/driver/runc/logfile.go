package runc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"flotilla/agent/driver"
)

// logRecord is one line of a container log file, in Docker's json-file
// format: {"log":"line\n","stream":"stdout","time":"..."}.
type logRecord struct {
	Log    string    `json:"log"`
	Stream string    `json:"stream"`
	Time   time.Time `json:"time"`
}

// logWriter appends records to path, rotating to path.1 ... path.(keep-1)
// when the file would grow past maxSize. It keeps a partial line per stream
// until its newline arrives (or it grows past 16 KiB).
type logWriter struct {
	mu      sync.Mutex
	path    string
	maxSize int64
	keep    int
	f       *os.File
	size    int64
	partial map[string][]byte
}

const maxPartialLine = 16 << 10

func openLogWriter(path string, maxSize int64, keep int) (*logWriter, error) {
	w := &logWriter{path: path, maxSize: maxSize, keep: keep, partial: map[string][]byte{}}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *logWriter) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	w.f, w.size = f, fi.Size()
	return nil
}

func (w *logWriter) rotate() error {
	w.f.Close()
	for i := w.keep - 1; i >= 1; i-- {
		src := w.path
		if i > 1 {
			src = fmt.Sprintf("%s.%d", w.path, i-1)
		}
		os.Rename(src, fmt.Sprintf("%s.%d", w.path, i))
	}
	if w.keep <= 1 {
		os.Remove(w.path)
	}
	return w.open()
}

// Write records data from stream, split into lines.
func (w *logWriter) Write(stream string, data []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	buf := append(w.partial[stream], data...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		w.record(stream, buf[:i+1])
		buf = buf[i+1:]
	}
	if len(buf) > maxPartialLine {
		w.record(stream, buf)
		buf = nil
	}
	w.partial[stream] = append([]byte(nil), buf...)
}

// Flush writes out partial lines (at process exit).
func (w *logWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for s, b := range w.partial {
		if len(b) > 0 {
			w.record(s, b)
		}
		delete(w.partial, s)
	}
}

func (w *logWriter) record(stream string, line []byte) {
	b, _ := json.Marshal(logRecord{Log: string(line), Stream: stream, Time: time.Now().UTC()})
	b = append(b, '\n')
	if w.maxSize > 0 && w.size > 0 && w.size+int64(len(b)) > w.maxSize {
		if err := w.rotate(); err != nil {
			return
		}
	}
	n, _ := w.f.Write(b)
	w.size += int64(n)
}

func (w *logWriter) Close() error {
	w.Flush()
	return w.f.Close()
}

// readLogs sends the records of the log at path (rotated files first) that
// opts selects. With opts.Follow it then waits for new records until ctx is
// done or alive() reports the writer gone and the file is drained.
func readLogs(ctx context.Context, path string, keep int, opts driver.LogOptions, alive func() bool, out chan<- driver.LogEntry) error {
	want := func(r logRecord) bool {
		if !(r.Stream == "stdout" && opts.Stdout || r.Stream == "stderr" && opts.Stderr) {
			return false
		}
		if !opts.Since.IsZero() && r.Time.Before(opts.Since) {
			return false
		}
		if !opts.Until.IsZero() && r.Time.After(opts.Until) {
			return false
		}
		return true
	}
	send := func(r logRecord) error {
		select {
		case out <- driver.LogEntry{Time: r.Time, Stream: r.Stream, Line: []byte(r.Log)}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var backlog []logRecord
	for i := keep - 1; i >= 1; i-- {
		f, err := os.Open(fmt.Sprintf("%s.%d", path, i))
		if err != nil {
			continue
		}
		scanRecords(f, func(r logRecord) {
			if want(r) {
				backlog = append(backlog, r)
			}
		})
		f.Close()
	}
	f, err := os.Open(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var rd *bufio.Reader
	if f != nil {
		defer func() { f.Close() }()
		rd = bufio.NewReader(f)
		for {
			line, err := rd.ReadBytes('\n')
			if err != nil {
				// Keep an incomplete record for the follow loop.
				if len(line) > 0 {
					f.Seek(-int64(len(line)), io.SeekCurrent)
					rd.Reset(f)
				}
				break
			}
			var r logRecord
			if json.Unmarshal(line, &r) == nil && want(r) {
				backlog = append(backlog, r)
			}
		}
	}
	if opts.Tail >= 0 && len(backlog) > opts.Tail {
		backlog = backlog[len(backlog)-opts.Tail:]
	}
	for _, r := range backlog {
		if err := send(r); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	var ino uint64
	if f != nil {
		if fi, err := f.Stat(); err == nil {
			ino = fi.Sys().(*syscall.Stat_t).Ino
		}
	}
	var pending []byte
	for {
		progressed, wasAlive := false, alive()
		if f != nil {
			for {
				chunk, err := rd.ReadBytes('\n')
				pending = append(pending, chunk...)
				if err != nil {
					break
				}
				progressed = true
				var r logRecord
				if json.Unmarshal(pending, &r) == nil && want(r) {
					if err := send(r); err != nil {
						return err
					}
				}
				pending = pending[:0]
			}
		}
		// Rotated (or created): switch to the new file.
		if fi, err := os.Stat(path); err == nil && fi.Sys().(*syscall.Stat_t).Ino != ino {
			if nf, err := os.Open(path); err == nil {
				if f != nil {
					f.Close()
				}
				f, rd, pending, ino = nf, bufio.NewReader(nf), nil, fi.Sys().(*syscall.Stat_t).Ino
				continue
			}
		}
		if !progressed && !wasAlive {
			return nil
		}
		if !opts.Until.IsZero() && time.Now().After(opts.Until) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func scanRecords(r io.Reader, fn func(logRecord)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec logRecord
		if json.Unmarshal(sc.Bytes(), &rec) == nil {
			fn(rec)
		}
	}
}
