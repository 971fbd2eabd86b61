package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
)

// Errors of the file commands. main prints them after "splitzip COMMAND: ", so they carry no prefix of their own.
var (
	errSameFile     = errors.New("the same file")
	errNotTensor    = errors.New("not a tensor file")
	errNotSplitZip  = errors.New("not splitzip output")
	errOutputName   = errors.New("output name does not match its format")
	errRawNeedsType = errors.New("raw input needs -dtype")
)

// writeOutput writes a command's output file through write, so that a failure never leaves a partial file: the
// bytes go to a temporary file in path's directory (the same file system, so the rename is atomic), which is
// flushed to disk and then renamed over path. On any error the temporary file is removed and an existing path
// is left as it was. A new file gets mode 0644 (less the umask); a replaced file keeps its mode. When path is a
// symbolic link, the file it points to is replaced and the link kept. An existing path that is not a regular
// file (a device such as /dev/null, a pipe) is written directly, since it holds no file to damage.
func writeOutput(path string, write func(w io.Writer) error) (err error) {
	perm, keepMode := fs.FileMode(0o644), false
	if fi, err := os.Stat(path); err == nil {
		switch {
		case fi.IsDir():
			return fmt.Errorf("output %s: is a directory", path)
		case !fi.Mode().IsRegular():
			return writeDirect(path, write)
		}
		perm, keepMode = fi.Mode().Perm(), true
		if path, err = filepath.EvalSymlinks(path); err != nil {
			return fmt.Errorf("output: %w", err)
		}
	}
	f, tmp, err := createTemp(path, perm)
	if err != nil {
		if dir := filepath.Dir(path); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("output %s: directory %s does not exist", path, dir)
		}
		return fmt.Errorf("output %s: %w", path, err)
	}
	stop := removeOnSignal(tmp)
	defer stop()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if keepMode {
		if err := f.Chmod(perm); err != nil { // the umask applied at creation; the replaced file had perm
			return fmt.Errorf("output %s: %w", path, err)
		}
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("output %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("output %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("output %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("output %s: %w", path, err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// createTemp creates a new hidden file beside path, named after it, with perm (less the umask).
func createTemp(path string, perm fs.FileMode) (*os.File, string, error) {
	dir, base := filepath.Split(path)
	for range 100 {
		tmp := filepath.Join(dir, "."+base+".splitzip-"+strconv.FormatUint(rand.Uint64()>>16, 36)+".tmp")
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, tmp, err
	}
	return nil, "", errors.New("cannot create a temporary file beside it")
}

// syncDir makes a rename in dir durable. Some systems cannot sync a directory; the file's own data is already
// on disk by then, so a failure here is not reported.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func writeDirect(path string, write func(w io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("output: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("output: %w", cerr)
	}
	return err
}

// exit is os.Exit, replaced by tests of removeOnSignal.
var exit = os.Exit

// removeOnSignal removes tmp and exits if the process is interrupted or terminated before stop is called, so
// that Ctrl-C during a long write leaves no temporary file. The exit status is 128 plus the signal's number, as
// a shell reports a process the signal killed.
func removeOnSignal(tmp string) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case s := <-sig:
			os.Remove(tmp)
			code := 1
			if n, ok := s.(syscall.Signal); ok {
				code = 128 + int(n)
			}
			exit(code)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
		<-finished
	}
}

// checkOutputNotInput refuses an output that names one of the inputs, by path or as the same file (a hard link,
// a symbolic link, another spelling of the path): writing it would replace the input. An input that does not
// exist is reported as missing.
func checkOutputNotInput(out string, inputs ...string) error {
	oi, oerr := os.Stat(out)
	for _, in := range inputs {
		ii, err := os.Stat(in)
		if err != nil {
			return inputError(in, err)
		}
		if sameClean(in, out) || oerr == nil && os.SameFile(ii, oi) {
			return fmt.Errorf("output %s is the input %s (%w): writing it would replace the input; name another output", out, in, errSameFile)
		}
	}
	return nil
}

func sameClean(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	ab, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == ab
}

// inputError says which input file could not be read and why, in words for the common case of a missing file.
func inputError(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("input %s: %w", path, fs.ErrNotExist)
	}
	return fmt.Errorf("input %s: %w", path, err)
}
