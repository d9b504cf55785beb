// slice: chase slices in one process, each tagged with the engine threads' CPU during it
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static uint64_t clk(clockid_t c){struct timespec t;clock_gettime(c,&t);return t.tv_sec*1000000000ULL+t.tv_nsec;}
static uint64_t rnd(uint64_t*s){*s^=*s<<13;*s^=*s>>7;*s^=*s<<17;return *s;}
static int tids[8], nt;
static void find_tids(void){DIR*d=opendir("/proc/self/task");struct dirent*e;nt=0;
 while((e=readdir(d))){if(e->d_name[0]=='.')continue;char p[64],n[32]={0};snprintf(p,64,"/proc/self/task/%s/comm",e->d_name);
 FILE*f=fopen(p,"r");if(f){if(fgets(n,32,f)&&!strncmp(n,"dedup",5)&&nt<8)tids[nt++]=atoi(e->d_name);fclose(f);}}closedir(d);}
static uint64_t eng_cpu(void){uint64_t s=0;for(int i=0;i<nt;i++){clockid_t c=((~(clockid_t)tids[i])<<3)|6;s+=clk(c);}return s;}
int main(int argc,char**argv){
 size_t mib=1024, len=mib<<20, np=len/4096; int secs=argc>1?atoi(argv[1]):60, settle=argc>2?atoi(argv[2]):20;
 uint64_t seed=0x9E3779B97F4A7C15ULL;
 char*m=mmap(0,len,3,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); uint32_t*o=malloc(np*4);
 for(size_t i=0;i<len/8;i+=8)((uint64_t*)m)[i]=rnd(&seed);
 for(size_t i=0;i<np;i++)o[i]=i; for(size_t i=np-1;i>0;i--){size_t j=rnd(&seed)%i;uint32_t t=o[i];o[i]=o[j];o[j]=t;}
 for(size_t i=0;i<np;i++)*(uint64_t*)(m+(size_t)o[i]*4096+8)=(uint64_t)o[(i+1)%np]*4096+8;
 char*x=mmap(0,128<<20,3,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); for(size_t i=0;i<(128<<20)/8;i+=8)((uint64_t*)x)[i]=rnd(&seed);
 for(int i=0;i<20;i++){free(malloc(1<<20));usleep(30000);}
 sleep(settle); find_tids();
 uint64_t off=(uint64_t)o[0]*4096+8, end=clk(CLOCK_MONOTONIC)+secs*1000000000ULL;
 while(clk(CLOCK_MONOTONIC)<end){
  uint64_t e0=eng_cpu(),c0=clk(CLOCK_THREAD_CPUTIME_ID),w0=clk(CLOCK_MONOTONIC);
  for(int k=0;k<100000;k++) off=*(volatile uint64_t*)(m+off);
  uint64_t c1=clk(CLOCK_THREAD_CPUTIME_ID),w1=clk(CLOCK_MONOTONIC),e1=eng_cpu();
  printf("%llu %llu %llu\n",(unsigned long long)(c1-c0),(unsigned long long)(w1-w0),(unsigned long long)(e1-e0));
 }
 fprintf(stderr,"threads %d check %llu\n",nt,(unsigned long long)off&1);
 return 0;}
