"""The x86_64 system calls: numbers, names, and the names of their arguments.

The table is this architecture's (``arch/x86/entry/syscalls/syscall_64.tbl``
in the kernel), with each call's argument names as the kernel's syscall
tracepoints declare them (``events/syscalls/sys_enter_NAME/format``).  A
``?`` means the kernel declares no tracepoint for the call (not implemented,
or built without it), ``-`` a call without arguments.  A few calls have a
tracepoint under another name (``stat`` is ``sys_enter_newstat``).

Whether *this* kernel has a call is a question for the running kernel, not
this table: :func:`tracepoint_name` names the tracepoint to look for.
"""

from __future__ import annotations

import functools

# number name arguments
_TABLE = """\
0 read fd,buf,count
1 write fd,buf,count
2 open filename,flags,mode
3 close fd
4 stat filename,statbuf
5 fstat fd,statbuf
6 lstat filename,statbuf
7 poll ufds,nfds,timeout_msecs
8 lseek fd,offset,whence
9 mmap addr,len,prot,flags,fd,off
10 mprotect start,len,prot
11 munmap addr,len
12 brk brk
13 rt_sigaction sig,act,oact,sigsetsize
14 rt_sigprocmask how,nset,oset,sigsetsize
15 rt_sigreturn -
16 ioctl fd,cmd,arg
17 pread64 fd,buf,count,pos
18 pwrite64 fd,buf,count,pos
19 readv fd,vec,vlen
20 writev fd,vec,vlen
21 access filename,mode
22 pipe fildes
23 select n,inp,outp,exp,tvp
24 sched_yield -
25 mremap addr,old_len,new_len,flags,new_addr
26 msync start,len,flags
27 mincore start,len,vec
28 madvise start,len_in,behavior
29 shmget key,size,shmflg
30 shmat shmid,shmaddr,shmflg
31 shmctl shmid,cmd,buf
32 dup fildes
33 dup2 oldfd,newfd
34 pause -
35 nanosleep rqtp,rmtp
36 getitimer which,value
37 alarm seconds
38 setitimer which,value,ovalue
39 getpid -
40 sendfile out_fd,in_fd,offset,count
41 socket family,type,protocol
42 connect fd,uservaddr,addrlen
43 accept fd,upeer_sockaddr,upeer_addrlen
44 sendto fd,buff,len,flags,addr,addr_len
45 recvfrom fd,ubuf,size,flags,addr,addr_len
46 sendmsg fd,msg,flags
47 recvmsg fd,msg,flags
48 shutdown fd,how
49 bind fd,umyaddr,addrlen
50 listen fd,backlog
51 getsockname fd,usockaddr,usockaddr_len
52 getpeername fd,usockaddr,usockaddr_len
53 socketpair family,type,protocol,usockvec
54 setsockopt fd,level,optname,optval,optlen
55 getsockopt fd,level,optname,optval,optlen
56 clone clone_flags,newsp,parent_tidptr,child_tidptr,tls
57 fork -
58 vfork -
59 execve filename,argv,envp
60 exit error_code
61 wait4 upid,stat_addr,options,ru
62 kill pid,sig
63 uname name
64 semget key,nsems,semflg
65 semop semid,tsops,nsops
66 semctl semid,semnum,cmd,arg
67 shmdt shmaddr
68 msgget key,msgflg
69 msgsnd msqid,msgp,msgsz,msgflg
70 msgrcv msqid,msgp,msgsz,msgtyp,msgflg
71 msgctl msqid,cmd,buf
72 fcntl fd,cmd,arg
73 flock fd,cmd
74 fsync fd
75 fdatasync fd
76 truncate path,length
77 ftruncate fd,length
78 getdents fd,dirent,count
79 getcwd buf,size
80 chdir filename
81 fchdir fd
82 rename oldname,newname
83 mkdir pathname,mode
84 rmdir pathname
85 creat pathname,mode
86 link oldname,newname
87 unlink pathname
88 symlink oldname,newname
89 readlink path,buf,bufsiz
90 chmod filename,mode
91 fchmod fd,mode
92 chown filename,user,group
93 fchown fd,user,group
94 lchown filename,user,group
95 umask mask
96 gettimeofday tv,tz
97 getrlimit resource,rlim
98 getrusage who,ru
99 sysinfo info
100 times tbuf
101 ptrace request,pid,addr,data
102 getuid -
103 syslog type,buf,len
104 getgid -
105 setuid uid
106 setgid gid
107 geteuid -
108 getegid -
109 setpgid pid,pgid
110 getppid -
111 getpgrp -
112 setsid -
113 setreuid ruid,euid
114 setregid rgid,egid
115 getgroups gidsetsize,grouplist
116 setgroups gidsetsize,grouplist
117 setresuid ruid,euid,suid
118 getresuid ruidp,euidp,suidp
119 setresgid rgid,egid,sgid
120 getresgid rgidp,egidp,sgidp
121 getpgid pid
122 setfsuid uid
123 setfsgid gid
124 getsid pid
125 capget header,dataptr
126 capset header,data
127 rt_sigpending uset,sigsetsize
128 rt_sigtimedwait uthese,uinfo,uts,sigsetsize
129 rt_sigqueueinfo pid,sig,uinfo
130 rt_sigsuspend unewset,sigsetsize
131 sigaltstack uss,uoss
132 utime filename,times
133 mknod filename,mode,dev
134 uselib ?
135 personality personality
136 ustat dev,ubuf
137 statfs pathname,buf
138 fstatfs fd,buf
139 sysfs option,arg1,arg2
140 getpriority which,who
141 setpriority which,who,niceval
142 sched_setparam pid,param
143 sched_getparam pid,param
144 sched_setscheduler pid,policy,param
145 sched_getscheduler pid
146 sched_get_priority_max policy
147 sched_get_priority_min policy
148 sched_rr_get_interval pid,interval
149 mlock start,len
150 munlock start,len
151 mlockall flags
152 munlockall -
153 vhangup -
154 modify_ldt func,ptr,bytecount
155 pivot_root new_root,put_old
156 _sysctl ?
157 prctl option,arg2,arg3,arg4,arg5
158 arch_prctl option,arg2
159 adjtimex txc_p
160 setrlimit resource,rlim
161 chroot filename
162 sync -
163 acct name
164 settimeofday tv,tz
165 mount dev_name,dir_name,type,flags,data
166 umount2 name,flags
167 swapon specialfile,swap_flags
168 swapoff specialfile
169 reboot magic1,magic2,cmd,arg
170 sethostname name,len
171 setdomainname name,len
172 iopl level
173 ioperm from,num,turn_on
174 create_module ?
175 init_module ?
176 delete_module ?
177 get_kernel_syms ?
178 query_module ?
179 quotactl cmd,special,id,addr
180 nfsservctl ?
181 getpmsg ?
182 putpmsg ?
183 afs_syscall ?
184 tuxcall ?
185 security ?
186 gettid -
187 readahead fd,offset,count
188 setxattr pathname,name,value,size,flags
189 lsetxattr pathname,name,value,size,flags
190 fsetxattr fd,name,value,size,flags
191 getxattr pathname,name,value,size
192 lgetxattr pathname,name,value,size
193 fgetxattr fd,name,value,size
194 listxattr pathname,list,size
195 llistxattr pathname,list,size
196 flistxattr fd,list,size
197 removexattr pathname,name
198 lremovexattr pathname,name
199 fremovexattr fd,name
200 tkill pid,sig
201 time tloc
202 futex uaddr,op,val,utime,uaddr2,val3
203 sched_setaffinity pid,len,user_mask_ptr
204 sched_getaffinity pid,len,user_mask_ptr
205 set_thread_area ?
206 io_setup nr_events,ctxp
207 io_destroy ctx
208 io_getevents ctx_id,min_nr,nr,events,timeout
209 io_submit ctx_id,nr,iocbpp
210 io_cancel ctx_id,iocb,result
211 get_thread_area ?
212 lookup_dcookie ?
213 epoll_create size
214 epoll_ctl_old ?
215 epoll_wait_old ?
216 remap_file_pages start,size,prot,pgoff,flags
217 getdents64 fd,dirent,count
218 set_tid_address tidptr
219 restart_syscall -
220 semtimedop semid,tsops,nsops,timeout
221 fadvise64 fd,offset,len,advice
222 timer_create which_clock,timer_event_spec,created_timer_id
223 timer_settime timer_id,flags,new_setting,old_setting
224 timer_gettime timer_id,setting
225 timer_getoverrun timer_id
226 timer_delete timer_id
227 clock_settime which_clock,tp
228 clock_gettime which_clock,tp
229 clock_getres which_clock,tp
230 clock_nanosleep which_clock,flags,rqtp,rmtp
231 exit_group error_code
232 epoll_wait epfd,events,maxevents,timeout
233 epoll_ctl epfd,op,fd,event
234 tgkill tgid,pid,sig
235 utimes filename,utimes
236 vserver ?
237 mbind start,len,mode,nmask,maxnode,flags
238 set_mempolicy mode,nmask,maxnode
239 get_mempolicy policy,nmask,maxnode,addr,flags
240 mq_open u_name,oflag,mode,u_attr
241 mq_unlink u_name
242 mq_timedsend mqdes,u_msg_ptr,msg_len,msg_prio,u_abs_timeout
243 mq_timedreceive mqdes,u_msg_ptr,msg_len,u_msg_prio,u_abs_timeout
244 mq_notify mqdes,u_notification
245 mq_getsetattr mqdes,u_mqstat,u_omqstat
246 kexec_load ?
247 waitid which,upid,infop,options,ru
248 add_key _type,_description,_payload,plen,ringid
249 request_key _type,_description,_callout_info,destringid
250 keyctl option,arg2,arg3,arg4,arg5
251 ioprio_set which,who,ioprio
252 ioprio_get which,who
253 inotify_init -
254 inotify_add_watch fd,pathname,mask
255 inotify_rm_watch fd,wd
256 migrate_pages pid,maxnode,old_nodes,new_nodes
257 openat dfd,filename,flags,mode
258 mkdirat dfd,pathname,mode
259 mknodat dfd,filename,mode,dev
260 fchownat dfd,filename,user,group,flag
261 futimesat dfd,filename,utimes
262 newfstatat dfd,filename,statbuf,flag
263 unlinkat dfd,pathname,flag
264 renameat olddfd,oldname,newdfd,newname
265 linkat olddfd,oldname,newdfd,newname,flags
266 symlinkat oldname,newdfd,newname
267 readlinkat dfd,pathname,buf,bufsiz
268 fchmodat dfd,filename,mode
269 faccessat dfd,filename,mode
270 pselect6 n,inp,outp,exp,tsp,sig
271 ppoll ufds,nfds,tsp,sigmask,sigsetsize
272 unshare unshare_flags
273 set_robust_list head,len
274 get_robust_list pid,head_ptr,len_ptr
275 splice fd_in,off_in,fd_out,off_out,len,flags
276 tee fdin,fdout,len,flags
277 sync_file_range fd,offset,nbytes,flags
278 vmsplice fd,uiov,nr_segs,flags
279 move_pages pid,nr_pages,pages,nodes,status,flags
280 utimensat dfd,filename,utimes,flags
281 epoll_pwait epfd,events,maxevents,timeout,sigmask,sigsetsize
282 signalfd ufd,user_mask,sizemask
283 timerfd_create clockid,flags
284 eventfd count
285 fallocate fd,mode,offset,len
286 timerfd_settime ufd,flags,utmr,otmr
287 timerfd_gettime ufd,otmr
288 accept4 fd,upeer_sockaddr,upeer_addrlen,flags
289 signalfd4 ufd,user_mask,sizemask,flags
290 eventfd2 count,flags
291 epoll_create1 flags
292 dup3 oldfd,newfd,flags
293 pipe2 fildes,flags
294 inotify_init1 flags
295 preadv fd,vec,vlen,pos_l,pos_h
296 pwritev fd,vec,vlen,pos_l,pos_h
297 rt_tgsigqueueinfo tgid,pid,sig,uinfo
298 perf_event_open attr_uptr,pid,cpu,group_fd,flags
299 recvmmsg fd,mmsg,vlen,flags,timeout
300 fanotify_init flags,event_f_flags
301 fanotify_mark fanotify_fd,flags,mask,dfd,pathname
302 prlimit64 pid,resource,new_rlim,old_rlim
303 name_to_handle_at dfd,name,handle,mnt_id,flag
304 open_by_handle_at mountdirfd,handle,flags
305 clock_adjtime which_clock,utx
306 syncfs fd
307 sendmmsg fd,mmsg,vlen,flags
308 setns fd,flags
309 getcpu cpup,nodep,unused
310 process_vm_readv pid,lvec,liovcnt,rvec,riovcnt,flags
311 process_vm_writev pid,lvec,liovcnt,rvec,riovcnt,flags
312 kcmp pid1,pid2,type,idx1,idx2
313 finit_module ?
314 sched_setattr pid,uattr,flags
315 sched_getattr pid,uattr,usize,flags
316 renameat2 olddfd,oldname,newdfd,newname,flags
317 seccomp op,flags,uargs
318 getrandom ubuf,len,flags
319 memfd_create uname,flags
320 kexec_file_load ?
321 bpf cmd,uattr,size
322 execveat fd,filename,argv,envp,flags
323 userfaultfd flags
324 membarrier cmd,flags,cpu_id
325 mlock2 start,len,flags
326 copy_file_range fd_in,off_in,fd_out,off_out,len,flags
327 preadv2 fd,vec,vlen,pos_l,pos_h,flags
328 pwritev2 fd,vec,vlen,pos_l,pos_h,flags
329 pkey_mprotect start,len,prot,pkey
330 pkey_alloc flags,init_val
331 pkey_free pkey
332 statx dfd,filename,flags,mask,buffer
333 io_pgetevents ctx_id,min_nr,nr,events,timeout,usig
334 rseq rseq,rseq_len,flags,sig
424 pidfd_send_signal pidfd,sig,info,flags
425 io_uring_setup entries,params
426 io_uring_enter fd,to_submit,min_complete,flags,argp,argsz
427 io_uring_register fd,opcode,arg,nr_args
428 open_tree dfd,filename,flags
429 move_mount from_dfd,from_pathname,to_dfd,to_pathname,flags
430 fsopen _fs_name,flags
431 fsconfig fd,cmd,_key,_value,aux
432 fsmount fs_fd,flags,attr_flags
433 fspick dfd,path,flags
434 pidfd_open pid,flags
435 clone3 uargs,size
436 close_range fd,max_fd,flags
437 openat2 dfd,filename,how,usize
438 pidfd_getfd pidfd,fd,flags
439 faccessat2 dfd,filename,mode,flags
440 process_madvise pidfd,vec,vlen,behavior,flags
441 epoll_pwait2 epfd,events,maxevents,timeout,sigmask,sigsetsize
442 mount_setattr dfd,path,flags,uattr,usize
443 quotactl_fd fd,cmd,id,addr
444 landlock_create_ruleset attr,size,flags
445 landlock_add_rule ruleset_fd,rule_type,rule_attr,flags
446 landlock_restrict_self ruleset_fd,flags
447 memfd_secret flags
448 process_mrelease pidfd,flags
449 futex_waitv waiters,nr_futexes,flags,timeout,clockid
450 set_mempolicy_home_node start,len,home_node,flags
451 cachestat fd,cstat_range,cstat,flags
452 fchmodat2 dfd,filename,mode,flags
453 map_shadow_stack ?
454 futex_wake uaddr,mask,nr,flags
455 futex_wait uaddr,val,mask,flags,timeout,clockid
456 futex_requeue waiters,flags,nr_wake,nr_requeue
457 statmount req,buf,bufsize,flags
458 listmount req,mnt_ids,nr_mnt_ids,flags
459 lsm_get_self_attr attr,ctx,size,flags
460 lsm_set_self_attr attr,ctx,size,flags
461 lsm_list_modules ids,size,flags
462 mseal start,len,flags
463 setxattrat dfd,pathname,at_flags,name,uargs,usize
464 getxattrat dfd,pathname,at_flags,name,uargs,usize
465 listxattrat dfd,pathname,at_flags,list,size
466 removexattrat dfd,pathname,at_flags,name
467 open_tree_attr dfd,filename,flags,uattr,usize
468 file_getattr dfd,filename,ufattr,usize,at_flags
469 file_setattr dfd,filename,ufattr,usize,at_flags
"""

# Calls whose tracepoints carry the name of the kernel function, not the call's.
_TRACEPOINT_NAMES = {
    "stat": "newstat",
    "fstat": "newfstat",
    "lstat": "newlstat",
    "sendfile": "sendfile64",
    "uname": "newuname",
    "umount2": "umount",
}

MAX_ARGUMENTS = 6


@functools.cache
def _by_name() -> dict[str, tuple[int, tuple[str, ...] | None]]:
    table: dict[str, tuple[int, tuple[str, ...] | None]] = {}
    for line in _TABLE.splitlines():
        number, name, arguments = line.split(" ")
        if arguments == "?":
            names: tuple[str, ...] | None = None
        elif arguments == "-":
            names = ()
        else:
            names = tuple(arguments.split(","))
        table[name] = (int(number), names)
    return table


@functools.cache
def _by_number() -> dict[int, str]:
    return {number: name for name, (number, _arguments) in _by_name().items()}


def names() -> list[str]:
    """Every system call name, in number order."""
    return list(_by_name())


def number(name: str) -> int | None:
    """The number of system call ``name``; None for a name this architecture does not have."""
    entry = _by_name().get(name)
    return entry[0] if entry is not None else None


def name(nr: int) -> str:
    """The name of system call ``nr`` (``syscall_NNN`` for a number the table does not know)."""
    return _by_number().get(nr, f"syscall_{nr}")


def argument_names(name: str) -> tuple[str, ...] | None:
    """The names of the call's arguments, in order; None when the kernel declares none."""
    entry = _by_name().get(name)
    return entry[1] if entry is not None else None


def tracepoint_name(name: str) -> str:
    """The name the kernel's ``sys_enter_*``/``sys_exit_*`` tracepoints use for the call."""
    return _TRACEPOINT_NAMES.get(name, name)
