(* ocaml_deep.ml: OCaml mutual recursion (walk -> step -> walk ...), deep.

   ocaml_deep overflow   restores the default SIGSEGV disposition (OCaml
                         4.13 would raise Stack_overflow instead), then
                         recurses until the kernel kills it: a real core.
   ocaml_deep live N     recurses N frames deep (N/2 walks, N/2 steps),
                         prints "thread main PID" and "ready", then blocks in
                         Unix.read on a pipe nobody writes to.

   [depth] counts the frames entered (one per walk, one per step).  It is an
   int array rather than a ref: a toplevel [ref] that the compiler sees is
   never exported may live in a register or be turned into a local; a
   module's toplevel value is a field of the module block camlOcaml_deep
   (a data symbol), and the array is a block whose field 0 holds the count
   as a tagged int (2n + 1).  The tests read it from the core through
   camlOcaml_deep's field for [depth] (the first field: it is defined first).

   No call is a tail call (each result is used afterwards), and
   [@inline never] keeps step and block real frames (walk, recursive, is
   not inlined by ocamlopt without flambda either).  Each walk and step
   frame takes 16 bytes of stack (a return address and one slot).

   A live stack, innermost first: read (libc) <- unix_read <- Unix.read
   <- Ocaml_deep.block <- step/walk ... N frames ... <- walk
   <- Ocaml_deep.entry <- caml_program <- caml_start_program
   <- caml_startup_common <- caml_main <- main <- __libc_start_call_main *)

let depth = Array.make 1 0
let limit = Array.make 1 max_int

let[@inline never] block () =
  let reader, _writer = Unix.pipe () in
  Printf.printf "thread main %d\nready\n%!" (Unix.getpid ());
  let buffer = Bytes.create 1 in
  (* Not a tail call: block keeps its frame under Unix.read. *)
  let got = Unix.read reader buffer 0 1 in
  got + Bytes.length buffer

let rec walk n =
  depth.(0) <- depth.(0) + 1;
  let result = if depth.(0) >= limit.(0) then block () else step (n + 1) in
  result + n

and[@inline never] step n =
  depth.(0) <- depth.(0) + 1;
  let result = if depth.(0) >= limit.(0) then block () else walk (n + 1) in
  result + 1

let () =
  match Array.to_list Sys.argv with
  | [ _; "overflow" ] ->
      Sys.set_signal Sys.sigsegv Sys.Signal_default;
      exit (if walk 0 = 0 then 0 else 1)
  | [ _; "live"; frames ] ->
      limit.(0) <- int_of_string frames;
      exit (if walk 0 = 0 then 0 else 1)
  | _ ->
      prerr_endline "usage: ocaml_deep overflow | live N";
      exit 2
