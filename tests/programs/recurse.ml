(* recurse.ml: an OCaml native program a few frames deep in a recursion,
   blocked in a system call.

   It prints "thread main PID" (OCaml 4.13 without the threads library runs
   one thread) and "ready", then blocks in Unix.read on a pipe nobody writes
   to, with this stack (innermost first):

     read (libc) <- unix_read (C stub) <- Unix.read <- Recurse.block
       <- Recurse.descend (n = 0) <- descend 1 <- descend 2 <- descend 3
       <- Recurse.entry <- caml_program <- caml_start_program ...

   Nothing is a tail call (every result is used afterwards), so every level
   keeps its frame; [@inline never] keeps block out of descend. *)

let counter = ref 0

let[@inline never] block fd =
  let buffer = Bytes.create 1 in
  Printf.printf "thread main %d\nready\n%!" (Unix.getpid ());
  let got = Unix.read fd buffer 0 1 in
  incr counter;
  got + !counter

let rec descend fd n =
  let result = if n = 0 then block fd else descend fd (n - 1) in
  incr counter;
  result + n

let () =
  let reader, _writer = Unix.pipe () in
  let total = descend reader 3 in
  exit (if total = 0 then 0 else 1)
